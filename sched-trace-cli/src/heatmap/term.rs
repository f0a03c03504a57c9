//! The heat map in a terminal: each character is two cells stacked (`▀`, the upper one in the
//! foreground colour, the lower in the background), in 24-bit colour where the terminal says it
//! has it (`COLORTERM`) and the 256-colour cube otherwise. Columns are merged to fit the width.

use std::fmt::Write;

use super::{Heatmap, Panel, svg::colour};
use crate::units::count;

/// How many colours the terminal shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colours {
    True,
    Cube256,
    /// None (`NO_COLOR`): a cell per character, shaded ` ░▒▓█` by its count.
    Plain,
}

impl Colours {
    /// From the environment: `NO_COLOR` (no-color.org), `COLORTERM=truecolor` or `24bit`.
    pub fn detect() -> Colours {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return Colours::Plain;
        }
        match std::env::var("COLORTERM") {
            Ok(v) if v.contains("truecolor") || v.contains("24bit") => Colours::True,
            _ => Colours::Cube256,
        }
    }

    fn fg(self, c: [u8; 3]) -> String {
        match self {
            Colours::True => format!("\x1b[38;2;{};{};{}m", c[0], c[1], c[2]),
            Colours::Cube256 => format!("\x1b[38;5;{}m", cube(c)),
            Colours::Plain => String::new(),
        }
    }

    fn bg(self, c: [u8; 3]) -> String {
        match self {
            Colours::True => format!("\x1b[48;2;{};{};{}m", c[0], c[1], c[2]),
            Colours::Cube256 => format!("\x1b[48;5;{}m", cube(c)),
            Colours::Plain => String::new(),
        }
    }

    fn reset(self) -> &'static str {
        if self == Colours::Plain { "" } else { RESET }
    }
}

/// A count as a shade character, on the same log scale as the colours.
fn shade_char(n: u64, max: u64) -> char {
    if n == 0 {
        return ' ';
    }
    let t = if max <= 1 { 1.0 } else { (n as f64).ln() / (max as f64).ln() };
    ['░', '▒', '▓', '█'][((t * 4.0) as usize).min(3)]
}

/// The nearest colour of the 6×6×6 cube of the 256-colour palette.
fn cube(c: [u8; 3]) -> u8 {
    let level = |v: u8| -> u8 {
        const STEPS: [u8; 6] = [0, 95, 135, 175, 215, 255];
        (0..6).min_by_key(|&i| (STEPS[i as usize] as i32 - v as i32).abs()).unwrap_or(0)
    };
    16 + 36 * level(c[0]) + 6 * level(c[1]) + level(c[2])
}

/// The width of the terminal on standard output, else `$COLUMNS`, else 100.
pub fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize on a terminal and fails otherwise.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 20 {
        return ws.ws_col as usize;
    }
    std::env::var("COLUMNS").ok().and_then(|v| v.parse().ok()).filter(|w| *w > 20).unwrap_or(100)
}

const RESET: &str = "\x1b[0m";
const LABEL_W: usize = 9;
const MARGIN_W: usize = 14;
const WHITE: [u8; 3] = [255, 255, 255];

/// Draws the map (and its small multiples) for a terminal `width` characters wide.
pub fn render(h: &Heatmap, width: usize, colours: Colours) -> String {
    let mut out = String::new();
    let p0 = &h.panels[0].grid;
    let b = h.buckets();
    let _ = writeln!(out, "{} — {}", h.metric.describe(), h.source.path);
    let lost = if h.source.lost_counted { count(h.source.lost_events) } else { "unknown".into() };
    let _ = writeln!(
        out,
        "{} events · p50 ≤ {} · p99 ≤ {} · max {} · lost events: {lost}{}",
        count(p0.events),
        crate::units::latency(p0.quantile(0.5)),
        crate::units::latency(p0.quantile(0.99)),
        crate::units::latency(p0.max_ns),
        match h.filter.args() {
            a if a.is_empty() => String::new(),
            a => format!(" · {}", a.join(" ")),
        }
    );
    let max = h.max_cell();
    let panels: Vec<&Panel> =
        if h.groups().is_empty() { vec![&h.panels[0]] } else { h.groups().iter().collect() };
    for p in panels {
        if !h.groups().is_empty() {
            let _ = writeln!(out, "\n{} ({} events)", p.label, count(p.grid.events));
        }
        panel(&mut out, h, p, width, max, colours);
    }
    // The colour scale.
    let _ = write!(out, "{:LABEL_W$} ", "");
    for i in 0..24 {
        let n = ((max.max(1) as f64).powf(i as f64 / 23.0)).round() as u64;
        match colours {
            Colours::Plain => out.push(shade_char(n.max(1), max)),
            _ => {
                let _ = write!(out, "{}█", colours.fg(colour(n.max(1), max)));
            }
        }
    }
    let _ = writeln!(out, "{} 1 … {} events per cell (log scale)", colours.reset(), count(max));
    let _ = writeln!(
        out,
        "{:LABEL_W$} each column is {}; each power of two of latency is {} rows",
        "",
        crate::units::latency(
            h.columns().width_ns.saturating_mul(merge_factor(h.columns().count, width) as u64)
        ),
        b.sub
    );
    out
}

fn merge_factor(columns: usize, width: usize) -> usize {
    let room = width.saturating_sub(LABEL_W + MARGIN_W + 2).max(10);
    columns.div_ceil(room).max(1)
}

fn panel(out: &mut String, h: &Heatmap, p: &Panel, width: usize, max: u64, colours: Colours) {
    let g = &p.grid;
    let b = h.buckets();
    let (first, last) = h.rows;
    let merge = merge_factor(g.columns.count, width);
    let cols = g.columns.count.div_ceil(merge);
    // Counts of the merged columns.
    let cell = |c: usize, r: usize| -> u64 {
        (c * merge..((c + 1) * merge).min(g.columns.count)).map(|k| g.count(k, r)).sum()
    };
    let merged_max = if merge == 1 {
        max
    } else {
        (0..cols)
            .flat_map(|c| (first..=last).map(move |r| (c, r)))
            .map(|(c, r)| cell(c, r))
            .max()
            .unwrap_or(1)
    };
    let totals = g.row_totals();
    let top = totals[first..=last].iter().copied().max().unwrap_or(1).max(1);
    let shade = |n: u64| if n == 0 { WHITE } else { colour(n, merged_max) };
    if colours == Colours::Plain {
        // A row per line, the highest latency first.
        for r in (first..=last).rev() {
            let label = if r % b.sub as usize == b.sub as usize - 1 || r == last {
                crate::units::latency(b.upper(r))
            } else {
                String::new()
            };
            let _ = write!(out, "{label:>LABEL_W$} ");
            out.extend((0..cols).map(|c| shade_char(cell(c, r), merged_max)));
            let bar = (totals[r] as f64 / top as f64 * (MARGIN_W - 2) as f64).round() as usize;
            let _ = writeln!(out, " {}", "▇".repeat(bar.max((totals[r] > 0) as usize)));
        }
        time_axis(out, h, cols, merge);
        return;
    }
    // Two rows per line, the highest latency first.
    let mut r = last as isize;
    while r >= first as isize {
        let (upper, lower) = (r as usize, r - 1);
        let label = if upper % b.sub as usize == b.sub as usize - 1 || upper == last {
            crate::units::latency(b.upper(upper))
        } else {
            String::new()
        };
        let _ = write!(out, "{label:>LABEL_W$} ");
        for c in 0..cols {
            let top_colour = shade(cell(c, upper));
            let bottom = if lower >= first as isize { shade(cell(c, lower as usize)) } else { WHITE };
            let _ = write!(out, "{}{}▀", colours.fg(top_colour), colours.bg(bottom));
        }
        // The marginal histogram: the larger of the two rows.
        let n = totals[upper].max(if lower >= first as isize { totals[lower as usize] } else { 0 });
        let bar = (n as f64 / top as f64 * (MARGIN_W - 2) as f64).round() as usize;
        let _ = writeln!(out, "{RESET} {}", "▇".repeat(bar.max((n > 0) as usize)));
        r -= 2;
    }
    time_axis(out, h, cols, merge);
}

/// The time axis: a label every 15 characters.
fn time_axis(out: &mut String, h: &Heatmap, cols: usize, merge: usize) {
    let _ = write!(out, "{:LABEL_W$} ", "");
    let mut axis = String::new();
    let mut c = 0;
    while c < cols {
        let text = format!("{:.2}s", h.column_start_s(c * merge));
        if c + text.chars().count() < cols {
            axis.push_str(&format!("{text:<15}"));
        }
        c += 15;
    }
    let _ = writeln!(out, "{}", axis.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cube_colours_are_the_nearest_levels() {
        assert_eq!(cube([0, 0, 0]), 16);
        assert_eq!(cube([255, 255, 255]), 231);
        assert_eq!(cube([250, 100, 0]), 16 + 36 * 5 + 6);
        assert_eq!(merge_factor(240, 100), 4);
        assert_eq!(merge_factor(50, 200), 1);
    }
}
