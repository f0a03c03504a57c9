//! The heat map as SVG: the map (time across, latency up on a log scale), its axes with units,
//! the marginal histogram of the whole window beside it with its percentiles, a legend for the
//! log colour scale, and the totals and lost events above it. Small multiples share rows,
//! columns and colour scale. Every cell is a `<rect>` carrying its column, row and count
//! (`data-c`, `data-r`, `data-n`), which is what the HTML page's interaction reads.

use std::fmt::Write;

use super::{Diff, Heatmap, Panel};
use crate::units::count;

/// Where a panel's map is on the picture, and its cell size (shared with the HTML page's code).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Layout {
    pub x: f64,
    pub y: f64,
    pub cell_w: f64,
    pub cell_h: f64,
    pub columns: usize,
    /// Bucket indexes of the lowest and highest rows shown.
    pub first_row: usize,
    pub last_row: usize,
}

impl Layout {
    pub fn width(&self) -> f64 {
        self.cell_w * self.columns as f64
    }

    pub fn height(&self) -> f64 {
        self.cell_h * (self.last_row - self.first_row + 1) as f64
    }

    fn cell_y(&self, row: usize) -> f64 {
        self.y + (self.last_row - row) as f64 * self.cell_h
    }
}

/// A drawn picture and where its maps are.
pub struct Picture {
    pub svg: String,
    pub width: f64,
    pub height: f64,
    pub layouts: Vec<Layout>,
}

const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";
const LEFT: f64 = 96.0;
const TOP: f64 = 70.0;

/// Light for few events, dark for many (after matplotlib's magma).
const PALETTE: [(f64, [u8; 3]); 6] = [
    (0.0, [252, 253, 191]),
    (0.2, [254, 176, 120]),
    (0.4, [241, 96, 93]),
    (0.6, [183, 55, 121]),
    (0.8, [114, 31, 129]),
    (1.0, [44, 17, 95]),
];

/// The colour of `n` events in a cell when the fullest has `max`: a log scale.
pub fn colour(n: u64, max: u64) -> [u8; 3] {
    let t = if max <= 1 { 1.0 } else { (n.max(1) as f64).ln() / (max as f64).ln() };
    ramp(&PALETTE, t.clamp(0.0, 1.0))
}

fn ramp(stops: &[(f64, [u8; 3])], t: f64) -> [u8; 3] {
    let i = stops.iter().position(|s| s.0 >= t).unwrap_or(stops.len() - 1).max(1);
    let ((t0, a), (t1, b)) = (stops[i - 1], stops[i]);
    let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

/// Blue where the other trace has more, red where this one has, white where they agree.
pub fn diff_colour(delta: i64, max: u64) -> [u8; 3] {
    const BLUE: [(f64, [u8; 3]); 3] = [(0.0, [240, 244, 250]), (0.5, [103, 169, 207]), (1.0, [33, 102, 172])];
    const RED: [(f64, [u8; 3]); 3] = [(0.0, [252, 240, 236]), (0.5, [239, 138, 98]), (1.0, [178, 24, 43])];
    let t = if max <= 1 { 1.0 } else { (delta.unsigned_abs().max(1) as f64).ln() / (max as f64).ln() };
    ramp(if delta < 0 { &BLUE } else { &RED }, t.clamp(0.0, 1.0))
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws a heat map (with its small multiples, when it has them).
pub fn render(h: &Heatmap) -> Picture {
    let mut out = String::new();
    let groups = h.groups();
    let (first, last) = h.rows;
    let nrows = last - first + 1;
    let cols = h.columns().count;
    let max = h.max_cell();
    let (title, subtitle) = titles(h);
    let mut layouts = Vec::new();
    let (width, height);
    if groups.is_empty() {
        let cell_w = (880.0 / cols as f64).floor().clamp(1.0, 24.0);
        let cell_h = (440.0 / nrows as f64).floor().clamp(3.0, 18.0);
        let l = Layout { x: LEFT, y: TOP, cell_w, cell_h, columns: cols, first_row: first, last_row: last };
        width = fit_titles(LEFT + l.width() + 24.0 + 150.0 + 20.0, &title, &subtitle);
        let legend_y = TOP + l.height() + 58.0;
        height = legend_y + 56.0;
        header(&mut out, width, height, &title, &subtitle);
        map(&mut out, h, &h.panels[0], &l, max, 0);
        marginal(&mut out, h, &h.panels[0], &l);
        legend(&mut out, LEFT, legend_y, max, &footnote(h));
        layouts.push(l);
    } else {
        // Small multiples: two across, each with its own axes, one colour scale.
        let per_row = 2usize;
        let cell_w = (420.0 / cols as f64).floor().clamp(1.0, 12.0);
        let cell_h = (200.0 / nrows as f64).floor().clamp(2.0, 10.0);
        let pane_w = LEFT + cell_w * cols as f64 + 40.0;
        let pane_h = 36.0 + cell_h * nrows as f64 + 48.0;
        let rows_of_panes = groups.len().div_ceil(per_row);
        width = fit_titles((pane_w * per_row as f64 + 20.0).max(700.0), &title, &subtitle);
        let legend_y = TOP + pane_h * rows_of_panes as f64 + 10.0;
        height = legend_y + 56.0;
        header(&mut out, width, height, &title, &subtitle);
        for (i, p) in groups.iter().enumerate() {
            let (px, py) = ((i % per_row) as f64 * pane_w, TOP + (i / per_row) as f64 * pane_h);
            let l = Layout {
                x: px + LEFT,
                y: py + 30.0,
                cell_w,
                cell_h,
                columns: cols,
                first_row: first,
                last_row: last,
            };
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" {FONT} font-size="13" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" {FONT} font-size="11" fill="#555">{} events, p99 ≤ {}</text>"##,
                l.x,
                py + 14.0,
                esc(&p.label),
                l.x,
                py + 26.0,
                count(p.grid.events),
                crate::units::latency(p.grid.quantile(0.99))
            );
            map(&mut out, h, p, &l, max, i + 1);
            layouts.push(l);
        }
        legend(&mut out, LEFT, legend_y, max, &footnote(h));
    }
    out.push_str("</svg>\n");
    Picture { svg: out, width, height, layouts }
}

fn titles(h: &Heatmap) -> (String, String) {
    let p = &h.panels[0].grid;
    let title = format!("{} — {}", capitalise(h.metric.describe()), h.source.path);
    let lost = if !h.source.lost_counted {
        "lost events: unknown".to_string()
    } else {
        format!("lost events: {}", count(h.source.lost_events))
    };
    let mut sub = format!(
        "{} events · p50 ≤ {} · p99 ≤ {} · max {} · {lost}",
        count(p.events),
        crate::units::latency(p.quantile(0.5)),
        crate::units::latency(p.quantile(0.99)),
        crate::units::latency(p.max_ns)
    );
    if let Some(ns) = h.source.missing_after_ns {
        let _ = write!(sub, " · not recorded after {:.3} s", ns as f64 / 1e9);
    }
    if h.source.unplaced.total() > 0 {
        let _ = write!(sub, " · {} events did not fit the trace", count(h.source.unplaced.total()));
    }
    let args = h.filter.args();
    if !args.is_empty() {
        let _ = write!(sub, " · {}", args.join(" "));
    }
    if let Some(per) = h.per {
        let _ = write!(sub, " · per {} (the {} with the most events)", per.name(), h.groups().len());
    }
    (title, sub)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn footnote(h: &Heatmap) -> String {
    format!(
        "Each column is {}; each power of two of latency is split into {} rows. An event is placed when it ended.",
        crate::units::latency(h.columns().width_ns),
        h.buckets().sub
    )
}

/// `width`, widened when the title or the subtitle would run past it (their text is one line:
/// a viewer reads the filter and the counts there).
fn fit_titles(width: f64, title: &str, subtitle: &str) -> f64 {
    // Average advance of the sans-serif faces at 17 px bold and at 12 px.
    let needed = (title.chars().count() as f64 * 10.0).max(subtitle.chars().count() as f64 * 6.9);
    width.max((LEFT + needed + 20.0).ceil())
}

fn header(out: &mut String, width: f64, height: f64, title: &str, subtitle: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}">"#
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="26" {FONT} font-size="17" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="48" {FONT} font-size="12" fill="#333">{}</text>"##,
        esc(subtitle)
    );
}

/// One panel's cells and axes.
fn map(out: &mut String, h: &Heatmap, p: &Panel, l: &Layout, max: u64, panel: usize) {
    let g = &p.grid;
    let _ = writeln!(out, r#"<g class="panel" data-panel="{panel}">"#);
    let _ = writeln!(
        out,
        r##"<rect class="map" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#999" stroke-width="0.5"/>"##,
        l.x,
        l.y,
        l.width(),
        l.height()
    );
    for c in 0..l.columns.min(g.columns.count) {
        let column = &g.column(c)[l.first_row..=l.last_row];
        for (r, &n) in (l.first_row..).zip(column) {
            if n > 0 {
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" data-c="{c}" data-r="{r}" data-n="{n}"/>"#,
                    l.x + c as f64 * l.cell_w,
                    l.cell_y(r),
                    l.cell_w,
                    l.cell_h,
                    hex(colour(n, max))
                );
            }
        }
    }
    let _ = writeln!(out, "</g>");
    y_axis(out, h, l);
    x_axis(out, h, l);
}

fn y_axis(out: &mut String, h: &Heatmap, l: &Layout) {
    let b = h.buckets();
    let (lo, hi) = (b.lower(l.first_row).max(1), b.upper(l.last_row));
    // Ticks at powers of ten (and 2 and 5 between them when there are few decades).
    let decades = ((hi as f64).log10() - (lo as f64).log10()).max(0.0);
    let steps: &[u64] = if decades < 2.5 { &[1, 2, 5] } else { &[1] };
    let mut unit = 1u64;
    while unit <= hi {
        for &m in steps {
            let v = unit.saturating_mul(m);
            if v < lo || v > hi {
                continue;
            }
            let y = latency_y(h, l, v);
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#666" stroke-width="0.8"/><text x="{:.1}" y="{:.1}" {FONT} font-size="11" text-anchor="end">{}</text>"##,
                l.x - 5.0,
                l.x,
                l.x - 8.0,
                y + 4.0,
                crate::units::latency(v)
            );
        }
        if unit > u64::MAX / 10 {
            break;
        }
        unit *= 10;
    }
    let mid = l.y + l.height() / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{mid:.1}" {FONT} font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {mid:.1})">{}</text>"#,
        l.x - 70.0,
        l.x - 70.0,
        esc(match h.metric {
            crate::correlate::Metric::CfsStolen => "CFS-stolen time per run (log)",
            _ => "latency (log scale)",
        })
    );
}

/// Where latency `v` is on the map's y axis (within its bucket, linearly).
fn latency_y(h: &Heatmap, l: &Layout, v: u64) -> f64 {
    let b = h.buckets();
    let row = b.row(v).clamp(l.first_row, l.last_row);
    let (lo, hi) = (b.lower(row), b.upper(row).max(b.lower(row) + 1));
    let within = ((v.saturating_sub(lo)) as f64 / (hi - lo) as f64).clamp(0.0, 1.0);
    l.cell_y(row) + l.cell_h * (1.0 - within)
}

fn x_axis(out: &mut String, h: &Heatmap, l: &Layout) {
    let c = h.columns();
    let (t0, span) = (h.column_start_s(0), c.width_ns as f64 * c.count as f64 / 1e9);
    let step = nice_step(span / 8.0);
    let bottom = l.y + l.height();
    let mut t = (t0 / step).ceil() * step;
    while t <= t0 + span + 1e-9 {
        let x = l.x + (t - t0) / span * l.width();
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="#666" stroke-width="0.8"/><text x="{x:.1}" y="{:.1}" {FONT} font-size="11" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            seconds_label(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" {FONT} font-size="12" text-anchor="middle">seconds after the recording started</text>"#,
        l.x + l.width() / 2.0,
        bottom + 36.0
    );
}

fn nice_step(at_least: f64) -> f64 {
    let p = 10f64.powf(at_least.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= at_least).unwrap_or(10.0 * p)
}

fn seconds_label(t: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{t:.decimals$}")
}

/// The whole window's histogram beside the map: a bar per row (log length, so that the tail
/// shows next to the mode), and its percentiles.
fn marginal(out: &mut String, h: &Heatmap, p: &Panel, l: &Layout) {
    let totals = p.grid.row_totals();
    let shown = &totals[l.first_row..=l.last_row];
    let top = shown.iter().copied().max().unwrap_or(0).max(1);
    let x0 = l.x + l.width() + 24.0;
    let w = 130.0;
    let _ = writeln!(out, r#"<g class="marginal">"#);
    for (i, &n) in shown.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let r = l.first_row + i;
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#8c6bb1" data-r="{r}" data-n="{n}"/>"##,
            l.cell_y(r),
            ((n as f64).ln_1p() / (top as f64).ln_1p() * w).max(1.0),
            l.cell_h.max(1.0)
        );
    }
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let v = p.grid.quantile(q);
        if v == 0 {
            continue;
        }
        let y = latency_y(h, l, v.saturating_sub(1));
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#222" stroke-dasharray="3,2"/><text x="{:.1}" y="{:.1}" {FONT} font-size="10">{name} ≤ {}</text>"##,
            x0 + w,
            x0 + w - 60.0,
            y - 2.0,
            crate::units::latency(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{x0:.1}" y="{:.1}" {FONT} font-size="11">all {} events</text><text x="{x0:.1}" y="{:.1}" {FONT} font-size="11">by latency (log scale)</text></g>"#,
        l.y - 20.0,
        count(p.grid.events),
        l.y - 6.0
    );
}

/// The colour scale: a ramp with counts at its decades.
fn legend(out: &mut String, x: f64, y: f64, max: u64, note: &str) {
    let w = 320.0;
    let _ = writeln!(out, r#"<g class="legend"><defs><linearGradient id="ramp">"#);
    for (t, c) in PALETTE {
        let _ = writeln!(out, r#"<stop offset="{:.0}%" stop-color="{}"/>"#, t * 100.0, hex(c));
    }
    let _ = writeln!(out, "</linearGradient></defs>");
    let _ = writeln!(
        out,
        r##"<rect x="{x:.1}" y="{y:.1}" width="{w}" height="12" fill="url(#ramp)" stroke="#999" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" {FONT} font-size="11">events per cell (log scale)</text>"##,
        x + w + 10.0,
        y + 10.0
    );
    let mut v = 1u64;
    while v <= max.max(1) {
        let t = if max <= 1 { 1.0 } else { (v as f64).ln() / (max as f64).ln() };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" {FONT} font-size="10" text-anchor="middle">{}</text>"#,
            x + t * w,
            y + 25.0,
            count(v)
        );
        if v > u64::MAX / 10 {
            break;
        }
        v *= 10;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" {FONT} font-size="10" text-anchor="end">fullest cell: {}</text>"#,
        x + w,
        y - 3.0,
        count(max)
    );
    let _ = writeln!(
        out,
        r##"<text x="{x:.1}" y="{:.1}" {FONT} font-size="11" fill="#555">{}</text></g>"##,
        y + 44.0,
        esc(note)
    );
}

/// Draws where two maps differ: red where this trace has more events in a cell, blue where
/// the other has, on one symmetric log scale.
pub fn render_diff(d: &Diff) -> Picture {
    let h = &d.this;
    let (first, last) = h.rows;
    let nrows = last - first + 1;
    let cols = d.columns();
    let cell_w = (880.0 / cols as f64).floor().clamp(1.0, 24.0);
    let cell_h = (440.0 / nrows as f64).floor().clamp(3.0, 18.0);
    let l = Layout { x: LEFT, y: TOP, cell_w, cell_h, columns: cols, first_row: first, last_row: last };
    let width = LEFT + l.width() + 40.0;
    let legend_y = TOP + l.height() + 58.0;
    let height = legend_y + 56.0;
    let mut out = String::new();
    let title =
        format!("{} — {} against {}", capitalise(h.metric.describe()), h.source.path, d.other.source.path);
    let subtitle = format!(
        "{} events against {} · red: more in {}, blue: more in {}",
        count(h.panels[0].grid.events),
        count(d.other.panels[0].grid.events),
        h.source.path,
        d.other.source.path
    );
    header(&mut out, width, height, &title, &subtitle);
    let max = d.max_delta();
    let _ = writeln!(out, r#"<g class="panel" data-panel="0">"#);
    let _ = writeln!(
        out,
        r##"<rect class="map" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#999" stroke-width="0.5"/>"##,
        l.x,
        l.y,
        l.width(),
        l.height()
    );
    for c in 0..cols {
        for r in first..=last {
            let delta = d.delta(c, r);
            if delta != 0 {
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" data-c="{c}" data-r="{r}" data-n="{delta}"/>"#,
                    l.x + c as f64 * l.cell_w,
                    l.cell_y(r),
                    l.cell_w,
                    l.cell_h,
                    hex(diff_colour(delta, max))
                );
            }
        }
    }
    let _ = writeln!(out, "</g>");
    y_axis(&mut out, h, &l);
    x_axis(&mut out, h, &l);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" {FONT} font-size="11">largest difference in a cell: {} events; {}</text>"#,
        legend_y + 10.0,
        count(max),
        esc(&footnote(h))
    );
    out.push_str("</svg>\n");
    Picture { svg: out, width, height, layouts: vec![l] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_light_to_dark_on_a_log_scale() {
        assert_eq!(colour(1, 1000), PALETTE[0].1);
        assert_eq!(colour(1000, 1000), PALETTE[5].1);
        let mid = colour(31, 1000); // ln 31 / ln 1000 ≈ 0.5
        assert!(mid[0] < PALETTE[1].1[0] && mid[0] > PALETTE[3].1[0], "{mid:?}");
        assert_eq!(colour(1, 1), PALETTE[5].1, "a single event is the top of its own scale");
        assert_eq!(diff_colour(-5, 5)[2], 172);
        assert_eq!(diff_colour(5, 5)[0], 178);
    }

    #[test]
    fn steps_and_labels_are_round() {
        assert_eq!((nice_step(0.3), nice_step(1.2), nice_step(7.0)), (0.5, 2.0, 10.0));
        assert_eq!((seconds_label(2.0, 1.0), seconds_label(0.25, 0.05)), ("2".into(), "0.25".into()));
    }
}
