//! The report as aligned text tables.

use std::fmt::Write;

use super::{Latency, OffCpuReport, Report};
use crate::{
    trace::TraceTarget,
    units::{count, duration_ns},
};

/// Renders `report`, listing at most `limit` threads and processes.
pub fn render(report: &Report, limit: usize) -> String {
    let mut out = String::new();
    header(&mut out, report);
    let _ = writeln!(out);

    let total = report.processes.len();
    let _ = writeln!(out, "Processes by on-CPU time{}", shown(limit, total));
    let mut rows = vec![row_header("PID", "COMM", Some("THREADS"))];
    for p in report.processes.iter().take(limit) {
        rows.push(row(
            p.pid.to_string(),
            &p.comm,
            Some(p.threads.to_string()),
            p.on_cpu_ns,
            &p.off_cpu,
            &p.runqueue_latency,
            p.switches.voluntary,
            p.switches.involuntary,
            p.migrations,
            p.wakers.first().map(|w| format!("{} ({})", w.comm, count(w.count))),
        ));
    }
    table(&mut out, &rows);
    let _ = writeln!(out);

    let total = report.threads.len();
    let _ = writeln!(out, "Threads by on-CPU time{}", shown(limit, total));
    let mut rows = vec![row_header("TID", "COMM", Some("PID"))];
    for t in report.threads.iter().take(limit) {
        rows.push(row(
            t.tid.to_string(),
            &t.comm,
            Some(t.pid.to_string()),
            t.on_cpu_ns,
            &t.off_cpu,
            &t.runqueue_latency,
            t.switches.voluntary,
            t.switches.involuntary,
            t.migrations,
            t.wakers.first().map(|w| match w.tid {
                crate::correlate::IRQ_WAKER => format!("{} ({})", w.comm, count(w.count)),
                tid => format!("{}/{tid} ({})", w.comm, count(w.count)),
            }),
        ));
    }
    table(&mut out, &rows);
    if !report.user_probes.is_empty() {
        // One line per probe name (a probe can have several sites).
        let mut hits: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
        for p in &report.user_probes {
            let e = hits.entry(format!("{}:{}", p.provider, p.name)).or_default();
            e.0 += p.hits;
            e.1 += 1;
        }
        let _ = writeln!(out, "\nUser-level probes (USDT)");
        let mut rows = vec![vec!["".to_string(), "PROBE".into(), "SITES".into(), "HITS".into()]];
        for (name, (n, sites)) in hits {
            rows.push(vec![String::new(), name, sites.to_string(), count(n)]);
        }
        table(&mut out, &rows);
    }
    let _ = writeln!(
        out,
        "\nRUNQ: waiting for a CPU after a wake-up or preemption; LAT: run-queue latency \
         (runnable → running); VOL/INVOL: voluntary/involuntary switches; MIGR: CPU migrations."
    );
    out
}

fn shown(limit: usize, total: usize) -> String {
    if total > limit { format!(" (top {limit} of {total}; --limit to see more)") } else { String::new() }
}

fn header(out: &mut String, r: &Report) {
    let t = &r.trace;
    let _ = writeln!(out, "sched-trace report: {}", t.path);
    let _ = writeln!(
        out,
        "  recorded:  {} on {} (Linux {}), {} CPUs, started {}",
        t.recorder, t.hostname, t.kernel_release, t.cpus, t.started_at
    );
    let target = match &t.target {
        TraceTarget::SystemWide => "the whole system".to_string(),
        TraceTarget::Pids { pids } => {
            format!("PID {}", pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
        }
        TraceTarget::Command { argv, pid } => format!("`{}` (PID {pid}) and its descendants", argv.join(" ")),
    };
    let _ = writeln!(out, "  target:    {target}");
    let _ = writeln!(out, "  span:      {}, {} events", duration_ns(t.duration_ns), count(t.events));
    match (&t.stop_reason, &t.truncated) {
        (Some(reason), _) => {
            let _ = writeln!(out, "  stopped:   {reason}");
        }
        (None, Some(tr)) => {
            let _ = writeln!(
                out,
                "  WARNING:   the recording was cut off: the file ends in a partial chunk at byte {} \
                 ({} bytes discarded); everything before it is reported",
                tr.offset,
                count(tr.discarded_bytes)
            );
        }
        (None, None) => {
            let _ = writeln!(
                out,
                "  WARNING:   the recording was not closed (no end marker); it may be incomplete"
            );
        }
    }
    let l = &r.lost;
    if !l.counted {
        let _ = writeln!(out, "  lost:      UNKNOWN: the trace ends before the first loss count was written");
    } else if l.total == 0 && l.filter_table_full == 0 {
        let _ = writeln!(out, "  lost:      0 events");
    } else {
        let kinds: Vec<String> = l.by_kind.iter().map(|(k, n)| format!("{k} {}", count(*n))).collect();
        let _ = writeln!(
            out,
            "  LOST:      {} events ({}): the numbers below undercount",
            count(l.total),
            kinds.join(", ")
        );
        if l.filter_table_full > 0 {
            let _ = writeln!(
                out,
                "  LOST:      {} child processes not followed (kernel filter table full)",
                count(l.filter_table_full)
            );
        }
    }
    if t.missed_switch_ins > 0 {
        let _ = writeln!(
            out,
            "  note:      {} switch-ins were not reported by the kernel (tasks hidden from tracing \
             ran before them, or events were lost); {} around them is not attributed",
            count(t.missed_switch_ins),
            duration_ns(t.unaccounted_ns)
        );
    }
    if t.late_events > 0 || t.unknown_records > 0 || t.unknown_chunks > 0 {
        let _ = writeln!(
            out,
            "  note:      {} late events, {} records and {} chunks of unknown kinds skipped",
            count(t.late_events),
            count(t.unknown_records),
            count(t.unknown_chunks)
        );
    }
}

const COLUMNS: [&str; 15] = [
    "", "", "", "ON-CPU", "RUNQ", "SLEEP", "EPOLL", "OTHER", "LAT n", "LAT p50", "LAT p99", "LAT max", "VOL",
    "INVOL", "MIGR",
];

fn row_header(id: &str, name: &str, extra: Option<&str>) -> Vec<String> {
    let mut r: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
    r[0] = id.into();
    r[1] = name.into();
    r[2] = extra.unwrap_or("").into();
    r.push("TOP WAKER".into());
    r
}

#[allow(clippy::too_many_arguments)]
fn row(
    id: String,
    name: &str,
    extra: Option<String>,
    on_cpu: u64,
    off: &OffCpuReport,
    lat: &Latency,
    vol: u64,
    invol: u64,
    migr: u64,
    waker: Option<String>,
) -> Vec<String> {
    let d = |ns: u64| if ns == 0 { "-".to_string() } else { duration_ns(ns) };
    vec![
        id,
        name.to_string(),
        extra.unwrap_or_default(),
        d(on_cpu),
        d(off.runqueue_ns),
        d(off.sleeping_ns),
        d(off.epoll_ns),
        d(off.other_ns),
        count(lat.count),
        d(lat.p50_ns),
        d(lat.p99_ns),
        d(lat.max_ns),
        count(vol),
        count(invol),
        count(migr),
        waker.unwrap_or_else(|| "-".into()),
    ]
}

/// Writes rows with every column as wide as its widest cell: text columns (1 and the last) left
/// aligned, numbers right aligned.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            line.push(' ');
            if c == 1 || c == cols - 1 {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
