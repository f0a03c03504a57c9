//! Folded lines to SVG, through inferno: its search, zoom and tooltips come with the picture.
//! The reason frames at the leaves (`[runq]`, `[sleep]`, …) and the grouping frames at the root
//! get colours of their own, so that time waiting for a CPU never looks like time asleep.

use std::io::Write;

use inferno::flamegraph::{
    self, Options, Palette,
    color::{BasicPalette, Color, PaletteMap},
};

/// What a flame graph shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlameKind {
    /// Where threads ran: CPU-clock samples.
    OnCpu,
    /// Where threads were off CPU, weighted by the time.
    OffCpu,
    /// Who woke threads, weighted by the time their wakees had been off CPU.
    Wakeup,
    /// Off-CPU stacks with the waker's stack on top.
    OffWake,
}

impl FlameKind {
    pub fn name(self) -> &'static str {
        match self {
            FlameKind::OnCpu => "oncpu",
            FlameKind::OffCpu => "offcpu",
            FlameKind::Wakeup => "wakeup",
            FlameKind::OffWake => "offwake",
        }
    }

    fn palette(self) -> Palette {
        match self {
            FlameKind::OnCpu => Palette::Basic(BasicPalette::Hot),
            FlameKind::OffCpu => Palette::Basic(BasicPalette::Io),
            FlameKind::Wakeup | FlameKind::OffWake => Palette::Basic(BasicPalette::Aqua),
        }
    }

    /// What a weight counts.
    pub fn unit(self) -> &'static str {
        match self {
            FlameKind::OnCpu => "samples",
            _ => "ns",
        }
    }
}

/// Colours of the frames sched-trace adds: reasons at the leaves, groups at the root.
pub const REASON_COLOURS: [(&str, (u8, u8, u8)); 8] = [
    ("[runq]", (220, 50, 47)),
    ("[cfs-stolen]", (150, 20, 110)),
    ("[sleep]", (70, 130, 200)),
    ("[epoll]", (40, 170, 170)),
    ("[netpoll]", (60, 160, 60)),
    ("[blocked]", (130, 130, 130)),
    ("[task-queue]", (230, 150, 30)),
    ("[wakeup]", (200, 170, 60)),
];

fn palette_map(lines: &[(String, u64)]) -> PaletteMap {
    let mut map = PaletteMap::default();
    for (name, (r, g, b)) in REASON_COLOURS {
        map.insert(name, Color { r, g, b });
    }
    // Grouping frames: "pid N", "tid N", "task N" in a quiet grey-blue.
    for (stack, _) in lines {
        for frame in stack.split(';').take(3) {
            if frame.contains("(pid ")
                || frame.contains("(tid ")
                || frame.starts_with("task ")
                || frame.starts_with("goroutine ")
            {
                map.insert(frame, Color { r: 176, g: 190, b: 205 });
            }
        }
    }
    map
}

/// inferno's options for a flame graph of `kind`, with the reason frames' colours in `map`.
fn options<'m>(kind: FlameKind, title: &str, subtitle: Option<&str>, map: &'m mut PaletteMap) -> Options<'m> {
    let mut opts = Options::default();
    opts.palette_map = Some(map);
    opts.title = title.to_string();
    opts.subtitle = subtitle.map(str::to_string);
    opts.count_name = kind.unit().to_string();
    opts
}

/// The most a flame graph's stacks may weigh in all: 2^62 (146 years of nanoseconds). inferno
/// adds the weights up in a `usize` (and a differential graph both sides' together), so a trace
/// whose durations claim more would overflow it; only a corrupt trace can.
const MAX_TOTAL_WEIGHT: u64 = 1 << 62;

/// Refuses stacks that weigh more than inferno can add up.
fn check_total(lines: &[(String, u64)]) -> std::io::Result<()> {
    let total = lines.iter().try_fold(0u64, |sum, (_, n)| sum.checked_add(*n));
    match total {
        Some(t) if t <= MAX_TOTAL_WEIGHT => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the stacks weigh more than {MAX_TOTAL_WEIGHT} in all (is the trace corrupt?)"),
        )),
    }
}

/// Draws `lines` as an SVG flame graph of `kind`, titled `title` (with `subtitle` under it).
pub fn render(
    lines: &[(String, u64)],
    kind: FlameKind,
    title: &str,
    subtitle: Option<&str>,
    out: impl Write,
) -> std::io::Result<()> {
    check_total(lines)?;
    let mut map = palette_map(lines);
    let mut opts = options(kind, title, subtitle, &mut map);
    opts.colors = kind.palette();
    opts.hash = true;
    let text: Vec<String> = lines.iter().map(|(s, n)| format!("{s} {n}")).collect();
    flamegraph::from_lines(&mut opts, text.iter().map(String::as_str), out)
}

/// Draws where `after` differs from `before` (inferno's differential flame graph: the shape is
/// `after`'s; red where a frame grew, blue where it shrank).
pub fn render_diff(
    before: &[(String, u64)],
    after: &[(String, u64)],
    kind: FlameKind,
    title: &str,
    subtitle: Option<&str>,
    out: impl Write,
) -> std::io::Result<()> {
    check_total(before)?;
    check_total(after)?;
    let text = |lines: &[(String, u64)]| crate::fold::to_text(lines).into_bytes();
    let mut diff = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options { normalize: true, ..Default::default() },
        &text(before)[..],
        &text(after)[..],
        &mut diff,
    )?;
    let mut map = palette_map(after);
    let mut opts = options(kind, title, subtitle, &mut map);
    let diff = String::from_utf8_lossy(&diff).into_owned();
    flamegraph::from_lines(&mut opts, diff.lines(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_frames_with_inferno() {
        let lines = vec![
            ("app (pid 1);main;hot_a".to_string(), 30),
            ("app (pid 1);main;hot_b;[runq]".to_string(), 10),
        ];
        let mut svg = Vec::new();
        render(&lines, FlameKind::OffCpu, "Off-CPU time", Some("test"), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(
            svg.contains("<svg")
                && svg.contains("hot_a")
                && svg.contains("[runq]")
                && svg.contains("Off-CPU time")
        );
        assert!(svg.contains("rgb(220,50,47)"), "the reason frame has its colour");
        let mut diff = Vec::new();
        render_diff(
            &lines,
            &[("app (pid 1);main;hot_a".to_string(), 60)],
            FlameKind::OnCpu,
            "diff",
            None,
            &mut diff,
        )
        .unwrap();
        assert!(String::from_utf8(diff).unwrap().contains("hot_a"));
    }
}
