//! The heat map as one self-contained HTML page (no network fetch): the SVG picture, and code
//! that shows a cell's details on hover — its time and latency range, count, the column's
//! percentiles and who contributed most — and turns a dragged rectangle (time range × latency
//! band) into the list of the longest events inside it and the exact `sched-trace` command
//! lines that select them.
//!
//! Opened as `page.html#selftest`, the page drives itself (a hover over the fullest cell, a
//! drag over a block around it) and writes what it showed, and any script error, into
//! `<pre id="selftest">`: the tests read that from `chromium --headless --dump-dom`.

use serde_json::{Value, json};

use super::{Diff, Heatmap, svg};

/// The page for a heat map.
pub fn render(h: &Heatmap) -> String {
    let picture = svg::render(h);
    let drawn: Vec<usize> = if h.groups().is_empty() { vec![0] } else { (1..h.panels.len()).collect() };
    let b = h.buckets();
    let (first, last) = h.rows;
    let panels: Vec<Value> = drawn
        .iter()
        .zip(&picture.layouts)
        .map(|(&i, layout)| {
            let p = &h.panels[i];
            let g = &p.grid;
            let mut cells = serde_json::Map::new();
            if g.details.is_some() {
                for c in 0..g.columns.count {
                    for r in first..=last {
                        let Some(d) = g.detail(c, r) else { continue };
                        let top: Vec<Value> = d.top.iter().map(|(w, n)| json!([h.name_of(w), n])).collect();
                        let longest: Vec<Value> = d
                            .longest
                            .iter()
                            .map(|s| {
                                let who = super::Who { tid: s.tid, pid: s.pid, task: s.task };
                                json!([
                                    s.ns,
                                    s.end.saturating_sub(h.source.start_ns) as f64 / 1e9,
                                    h.name_of(&who),
                                    if s.cpu == crate::correlate::NO_CPU {
                                        Value::Null
                                    } else {
                                        s.cpu.into()
                                    }
                                ])
                            })
                            .collect();
                        cells.insert(format!("{c},{r}"), json!({ "top": top, "longest": longest }));
                    }
                }
            }
            json!({
                "label": p.label,
                "group_args": p.group_args,
                "layout": layout,
                "column_max": g.column_max,
                "cells": cells,
            })
        })
        .collect();
    let data = json!({
        "trace": h.source.path,
        "metric": h.metric.name(),
        "filter_args": h.filter.args(),
        "start_s": h.column_start_s(0),
        "width_ns": h.columns().width_ns,
        // Edges of bucket `first + i`: lower at i, upper at i + 1.
        "first_row": first,
        "edges": (first..=last).map(|r| b.lower(r)).chain([b.upper(last)]).collect::<Vec<_>>(),
        "panels": panels,
    });
    let title = format!("{} — {}", h.metric.describe(), h.source.path);
    page(&title, &picture.svg, &data)
}

/// The page for a diff (hover only: there are no events to list).
pub fn render_diff(d: &Diff) -> String {
    let picture = svg::render_diff(d);
    let b = d.this.buckets();
    let (first, last) = d.this.rows;
    let data = json!({
        "trace": d.this.source.path,
        "metric": d.this.metric.name(),
        "filter_args": d.this.filter.args(),
        "start_s": 0.0,
        "width_ns": d.this.columns().width_ns,
        "first_row": first,
        "edges": (first..=last).map(|r| b.lower(r)).chain([b.upper(last)]).collect::<Vec<_>>(),
        "panels": [{ "label": "difference", "group_args": [], "layout": picture.layouts[0], "column_max": [], "cells": {} }],
        "diff": true,
    });
    page(
        &format!("{} — {} against {}", d.this.metric.describe(), d.this.source.path, d.other.source.path),
        &picture.svg,
        &data,
    )
}

fn page(title: &str, svg: &str, data: &Value) -> String {
    // JSON inside <script>: a "</" would end the element.
    let data = data.to_string().replace("</", "<\\/");
    let title = title.replace('&', "&amp;").replace('<', "&lt;");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 16px; color: #222; }}
#maps svg {{ user-select: none; cursor: crosshair; }}
#tip {{ position: fixed; pointer-events: none; background: #fffff2; border: 1px solid #999; padding: 6px 8px;
        font-size: 12px; line-height: 1.4; box-shadow: 2px 2px 6px rgba(0,0,0,.2); max-width: 460px; }}
#selection {{ margin-top: 10px; font-size: 13px; max-width: 1100px; }}
#selection code {{ display: block; background: #f3f3f3; padding: 6px; margin: 4px 0; white-space: pre-wrap; word-break: break-all; }}
#selection table {{ border-collapse: collapse; font-size: 12px; }}
#selection td, #selection th {{ padding: 2px 10px 2px 0; text-align: left; }}
.hint {{ color: #666; font-size: 12px; }}
</style></head>
<body>
<div id="maps">{svg}</div>
<div id="tip" hidden></div>
<div id="selection"><span class="hint">Hover a cell for its details; drag a rectangle (time × latency) to list its events and get the command line that selects them.</span></div>
<pre id="selftest" hidden></pre>
<script type="application/json" id="data">{data}</script>
<script>
{SCRIPT}
</script>
</body></html>
"#
    )
}

/// The command line that selects the events of a rectangle (what the page builds, for tests).
pub fn selection_command(h: &Heatmap, panel: usize, cols: (usize, usize), rows: (usize, usize)) -> String {
    let b = h.buckets();
    let from = h.column_start_s(cols.0);
    let to = h.column_start_s(cols.1 + 1);
    let mut args = vec![
        "sched-trace".to_string(),
        "flamegraph".into(),
        h.source.path.clone(),
        "--metric".into(),
        h.metric.name().into(),
        "--latency".into(),
        format!(
            "{}..{}",
            crate::units::latency_arg(b.lower(rows.0)),
            crate::units::latency_arg(b.upper(rows.1))
        ),
    ];
    let mut filter = h.filter.clone();
    (filter.from_s, filter.to_s) = (Some(from), Some(to));
    args.extend(filter.args());
    args.extend(h.panels[panel].group_args.iter().cloned());
    args.join(" ")
}

/// The page's code. It reads the data block, maps pointer positions to cells through each
/// panel's layout, and builds its texts from the data and the cells' own attributes.
const SCRIPT: &str = r###"
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const errors = [];
window.addEventListener("error", (e) => errors.push(String(e.message)));
const svg = document.querySelector("#maps svg");
const tip = document.getElementById("tip");
const sel = document.getElementById("selection");
const NS = "http://www.w3.org/2000/svg";

function lat(ns) {
  const units = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]];
  for (const [per, u] of units) {
    if (ns >= per || per === 1) {
      const v = ns / per;
      return (v >= 100 || Number.isInteger(v) ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " " + u;
    }
  }
}
function latArg(ns) {
  for (const [per, u] of [[1e9, "s"], [1e6, "ms"], [1e3, "us"]]) {
    if (ns >= per) {
      const whole = Math.floor(ns / per), frac = ns - whole * per;
      if (frac === 0) return whole + u;
      const digits = Math.round(Math.log10(per));
      return whole + "." + String(frac).padStart(digits, "0").replace(/0+$/, "") + u;
    }
  }
  return ns + "ns";
}
function secs(s) { return s.toFixed(9).replace(/0+$/, "").replace(/\.$/, ".0"); }
function colStart(c) { return DATA.start_s + c * DATA.width_ns / 1e9; }
function lower(r) { return DATA.edges[r - DATA.first_row]; }
function upper(r) { return DATA.edges[r - DATA.first_row + 1]; }

// Per panel: counts by cell, from the drawn rectangles.
const counts = DATA.panels.map(() => new Map());
const columns = DATA.panels.map(() => new Map());
document.querySelectorAll("g.panel").forEach((g) => {
  const p = Number(g.dataset.panel), i = DATA.panels.length === 1 ? 0 : p - 1;
  if (!counts[i]) return;
  g.querySelectorAll("rect[data-c]").forEach((r) => {
    const c = Number(r.dataset.c), row = Number(r.dataset.r), n = Number(r.dataset.n);
    counts[i].set(c + "," + row, n);
    if (!columns[i].has(c)) columns[i].set(c, []);
    columns[i].get(c).push([row, n]);
  });
});
function columnSummary(i, c) {
  const rows = (columns[i].get(c) || []).slice().sort((a, b) => a[0] - b[0]);
  const total = rows.reduce((s, x) => s + Math.abs(x[1]), 0);
  const q = (f) => { let seen = 0, rank = Math.max(1, Math.ceil(f * total)); for (const [r, n] of rows) { seen += Math.abs(n); if (seen >= rank) return upper(r); } return 0; };
  return { total, p50: q(0.5), p99: q(0.99), max: (DATA.panels[i].column_max || [])[c] || 0 };
}

// The cell under a pointer position: [panel, column, row], or null.
function cellAt(clientX, clientY) {
  const pt = svg.createSVGPoint();
  pt.x = clientX; pt.y = clientY;
  const p = pt.matrixTransform(svg.getScreenCTM().inverse());
  for (let i = 0; i < DATA.panels.length; i++) {
    const l = DATA.panels[i].layout;
    const c = Math.floor((p.x - l.x) / l.cell_w);
    const rowFromTop = Math.floor((p.y - l.y) / l.cell_h);
    const r = l.last_row - rowFromTop;
    if (c >= 0 && c < l.columns && r >= l.first_row && r <= l.last_row) return [i, c, r];
  }
  return null;
}

function describe(i, c, r) {
  const panel = DATA.panels[i];
  const n = counts[i].get(c + "," + r) || 0;
  const col = columnSummary(i, c);
  const lines = [];
  if (DATA.panels.length > 1) lines.push("<b>" + panel.label + "</b>");
  lines.push(colStart(c).toFixed(3) + " s – " + colStart(c + 1).toFixed(3) + " s · " + lat(lower(r)) + " – " + lat(upper(r)));
  lines.push((DATA.diff ? "difference: " + (n > 0 ? "+" : "") + n : n + " events") + " in this cell");
  if (!DATA.diff) lines.push("column: " + col.total + " events, p50 ≤ " + lat(col.p50) + ", p99 ≤ " + lat(col.p99) + (col.max ? ", longest " + lat(col.max) : ""));
  const d = panel.cells[c + "," + r];
  if (d && d.top.length) lines.push("most from: " + d.top.map(([who, k]) => who + " (" + k + ")").join(", "));
  return { n, text: lines.join("\n"), html: lines.join("<br>") };
}

svg.addEventListener("mousemove", (e) => {
  if (drag) { updateDrag(e); return; }
  const at = cellAt(e.clientX, e.clientY);
  if (!at) { tip.hidden = true; return; }
  const d = describe(...at);
  tip.innerHTML = d.html;
  tip.dataset.text = d.text;
  tip.hidden = false;
  tip.style.left = (e.clientX + 14) + "px";
  tip.style.top = (e.clientY + 14) + "px";
});
svg.addEventListener("mouseleave", () => { tip.hidden = true; });

let drag = null;
svg.addEventListener("mousedown", (e) => {
  const at = cellAt(e.clientX, e.clientY);
  if (!at) return;
  e.preventDefault();
  const box = document.createElementNS(NS, "rect");
  box.setAttribute("fill", "rgba(30,120,255,0.15)");
  box.setAttribute("stroke", "#1e78ff");
  box.setAttribute("stroke-width", "1.5");
  box.setAttribute("pointer-events", "none");
  svg.appendChild(box);
  drag = { start: at, end: at, box };
  updateDrag(e);
});
function bounds(a, b) {
  return { panel: a[0], c0: Math.min(a[1], b[1]), c1: Math.max(a[1], b[1]), r0: Math.min(a[2], b[2]), r1: Math.max(a[2], b[2]) };
}
function updateDrag(e) {
  const at = cellAt(e.clientX, e.clientY);
  if (at && at[0] === drag.start[0]) drag.end = at;
  const s = bounds(drag.start, drag.end), l = DATA.panels[s.panel].layout;
  drag.box.setAttribute("x", l.x + s.c0 * l.cell_w);
  drag.box.setAttribute("y", l.y + (l.last_row - s.r1) * l.cell_h);
  drag.box.setAttribute("width", (s.c1 - s.c0 + 1) * l.cell_w);
  drag.box.setAttribute("height", (s.r1 - s.r0 + 1) * l.cell_h);
}
window.addEventListener("mouseup", () => {
  if (!drag) return;
  const s = bounds(drag.start, drag.end);
  drag = null;
  select(s);
});

function command(s) {
  const panel = DATA.panels[s.panel];
  const filter = [];
  const skip = new Set(["--from", "--to"]);
  for (let k = 0; k < DATA.filter_args.length; k += 2) {
    if (!skip.has(DATA.filter_args[k])) filter.push(DATA.filter_args[k], DATA.filter_args[k + 1]);
  }
  const time = ["--from", secs(colStart(s.c0)), "--to", secs(colStart(s.c1 + 1))];
  const flame = ["sched-trace", "flamegraph", DATA.trace, "--metric", DATA.metric, "--latency", latArg(lower(s.r0)) + ".." + latArg(upper(s.r1))]
    .concat(filter, time, panel.group_args);
  const report = ["sched-trace", "report", DATA.trace].concat(filter, time, panel.group_args);
  return { flame: flame.join(" "), report: report.join(" ") };
}

let lastSelection = null;
function select(s) {
  let total = 0;
  const events = [];
  for (let c = s.c0; c <= s.c1; c++) {
    for (let r = s.r0; r <= s.r1; r++) {
      total += counts[s.panel].get(c + "," + r) || 0;
      const d = DATA.panels[s.panel].cells[c + "," + r];
      if (d) events.push(...d.longest);
    }
  }
  events.sort((a, b) => b[0] - a[0]);
  const shown = events.slice(0, 50);
  const cmd = command(s);
  const rows = shown.map(([ns, at, who, cpu]) => "<tr><td>" + at.toFixed(6) + " s</td><td>" + lat(ns) + "</td><td>" + who + "</td><td>" + (cpu === null ? "" : "CPU " + cpu) + "</td></tr>").join("");
  const head = (DATA.diff ? "difference " : "") + total + " events from " + colStart(s.c0).toFixed(3) + " s to " + colStart(s.c1 + 1).toFixed(3) + " s with " + DATA.metric + " from " + lat(lower(s.r0)) + " to " + lat(upper(s.r1));
  sel.innerHTML = "<b>" + head + "</b>" +
    (shown.length ? "<p>The longest of them (the " + shown.length + " longest of each cell's kept events):</p><table><tr><th>ended at</th><th>" + DATA.metric + "</th><th>who</th><th>where</th></tr>" + rows + "</table>" : "") +
    (DATA.diff ? "" : "<p>Their stacks, and the report of that time:</p><code id=\"cmd-flamegraph\">" + cmd.flame + "</code><code id=\"cmd-report\">" + cmd.report + "</code>");
  lastSelection = { total, listed: shown.length, command: cmd.flame, report: cmd.report, head, cols: [s.c0, s.c1], rows: [s.r0, s.r1], panel: s.panel };
  return lastSelection;
}

// A scripted hover and drag, for tests: `page.html#selftest`.
function selftest() {
  const out = { errors, hover: null, selection: null };
  try {
    const i = 0, l = DATA.panels[i].layout;
    let best = null;
    for (const [key, n] of counts[i]) if (!best || Math.abs(n) > Math.abs(best[1])) best = [key, n];
    if (best) {
      const [c, r] = best[0].split(",").map(Number);
      const toClient = (cc, rr) => {
        const pt = svg.createSVGPoint();
        pt.x = l.x + (cc + 0.5) * l.cell_w; pt.y = l.y + (l.last_row - rr + 0.5) * l.cell_h;
        const q = pt.matrixTransform(svg.getScreenCTM());
        return { clientX: q.x, clientY: q.y, bubbles: true };
      };
      svg.dispatchEvent(new MouseEvent("mousemove", toClient(c, r)));
      out.hover = { cell: [c, r], count: best[1], text: tip.dataset.text || "", shown: !tip.hidden };
      const c1 = Math.min(c + 2, l.columns - 1), r0 = Math.max(r - 2, l.first_row);
      svg.dispatchEvent(new MouseEvent("mousedown", toClient(c, r)));
      svg.dispatchEvent(new MouseEvent("mousemove", toClient(c1, r0)));
      window.dispatchEvent(new MouseEvent("mouseup", toClient(c1, r0)));
      out.selection = lastSelection;
    }
  } catch (e) {
    errors.push(String(e && e.stack || e));
  }
  const pre = document.getElementById("selftest");
  pre.textContent = JSON.stringify(out);
  pre.hidden = false;
}
if (location.hash === "#selftest") window.addEventListener("load", selftest);
"###;
