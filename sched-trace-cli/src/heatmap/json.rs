//! The heat map as JSON, for other programs.
//!
//! Schema `sched-trace/heatmap/1`:
//!
//! ```text
//! {
//!   "schema": "sched-trace/heatmap/1",
//!   "metric": "runq" | "offcpu" | "sleep" | "epoll" | "blocked" | "task-queue" | "netpoll" | "cfs-stolen",
//!   "description": what the metric measures, in words,
//!   "trace": { "path", "start_ns" (the recording's start, trace clock), "events" (read),
//!              "lost_events", "lost_counted" (false: the loss is unknown),
//!              "missing_after_s" (null, or: nothing after this many seconds was recorded),
//!              "unplaced" (events the reader dropped or moved; see `sched-trace report`) },
//!   "filter": { "pid", "tid", "task", "cpu", "comm", "from_s", "to_s" } (null: not restricted),
//!   "per": null | "cpu" | "thread" | "process" | "task",
//!   "columns": { "start_s" (seconds after the recording's start), "width_ns", "count" },
//!   "rows": { "sub_buckets" (per power of two), "first" (bucket index of the first row shown),
//!             "edges_ns" (count + 1 edges: row i holds latencies in [edges_ns[i], edges_ns[i+1])) },
//!   "panels": [ { "label", "events", "sum_ns", "min_ns", "max_ns",
//!                 "p50_ns", "p90_ns", "p99_ns" (at bucket resolution: the upper edge of the
//!                 bucket holding that rank),
//!                 "counts": [ per column: [ per row shown, from the lowest latency up: events ] ],
//!                 "column_max_ns": [ per column: its longest event (0: none) ] } ],
//!   "max_cell": the largest count of the panels drawn (the colour scale's top)
//! }
//! ```
//! The first panel holds every selected event; with `per`, one panel per group follows, the
//! groups with the most events first. Events are placed in the column of the moment they ended.
//! A diff (`--diff OTHER`) is `{"schema": "sched-trace/heatmap-diff/1", "this": map, "other":
//! map, "delta": [ per column: [ per row: this − other ] ]}` with both maps on the same rows and
//! columns (time from each recording's start).

use serde_json::{Value, json};

use super::{Diff, Heatmap};

pub const SCHEMA: &str = "sched-trace/heatmap/1";
pub const DIFF_SCHEMA: &str = "sched-trace/heatmap-diff/1";

pub fn to_value(h: &Heatmap) -> Value {
    let (first, last) = h.rows;
    let b = h.buckets();
    let edges: Vec<u64> = (first..=last).map(|r| b.lower(r)).chain([b.upper(last)]).collect();
    let panels: Vec<Value> = h
        .panels
        .iter()
        .map(|p| {
            let g = &p.grid;
            let counts: Vec<Vec<u64>> =
                (0..g.columns.count).map(|c| g.column(c)[first..=last].to_vec()).collect();
            json!({
                "label": p.label,
                "events": g.events,
                "sum_ns": g.sum_ns,
                "min_ns": if g.events == 0 { 0 } else { g.min_ns },
                "max_ns": g.max_ns,
                "p50_ns": g.quantile(0.50),
                "p90_ns": g.quantile(0.90),
                "p99_ns": g.quantile(0.99),
                "counts": counts,
                "column_max_ns": g.column_max,
            })
        })
        .collect();
    let c = h.columns();
    json!({
        "schema": SCHEMA,
        "metric": h.metric.name(),
        "description": h.metric.describe(),
        "trace": {
            "path": h.source.path,
            "start_ns": h.source.start_ns,
            "events": h.source.events,
            "lost_events": h.source.lost_events,
            "lost_counted": h.source.lost_counted,
            "missing_after_s": h.source.missing_after_ns.map(|ns| ns as f64 / 1e9),
            "unplaced": h.source.unplaced,
        },
        "filter": h.filter,
        "per": h.per.map(|p| p.name()),
        "columns": { "start_s": h.column_start_s(0), "width_ns": c.width_ns, "count": c.count },
        "rows": { "sub_buckets": b.sub, "first": first, "edges_ns": edges },
        "panels": panels,
        "max_cell": h.max_cell(),
    })
}

pub fn diff_to_value(d: &Diff) -> Value {
    let (first, last) = d.this.rows;
    let delta: Vec<Vec<i64>> =
        (0..d.columns()).map(|c| (first..=last).map(|r| d.delta(c, r)).collect()).collect();
    json!({ "schema": DIFF_SCHEMA, "this": to_value(&d.this), "other": to_value(&d.other), "delta": delta })
}
