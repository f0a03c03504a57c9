//! The report as aligned text tables.

use std::fmt::Write;

use super::{CpuReport, Latency, OffCpuReport, Report, TaskSection};
use crate::{
    correlate::ParkReason,
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
    // Usable CPUs next to the thread count, when the trace says: more busy threads than CPUs
    // shows at a glance.
    let with_cpus = report.processes.iter().any(|p| p.usable_cpus.is_some());
    for p in report.processes.iter().take(limit) {
        let threads = match (with_cpus, p.usable_cpus, p.quota_cpus) {
            (false, ..) => p.threads.to_string(),
            (true, cpus, quota) => format!(
                "{} on {}{}",
                p.threads,
                cpus.map_or("?".into(), |c| c.to_string()),
                quota.map_or(String::new(), |q| format!(" (quota {q:.2})"))
            ),
        };
        rows.push(row(
            p.pid.to_string(),
            &p.comm,
            Some(threads),
            p.on_cpu_ns,
            &p.off_cpu,
            &p.runqueue_latency,
            p.switches.voluntary,
            p.switches.involuntary,
            p.migrations,
            p.wakers.first().map(|w| format!("{} ({})", w.comm, count(w.count))),
        ));
    }
    if with_cpus {
        rows[0][2] = "THREADS on CPUS".into();
    }
    table(&mut out, &without_empty_throttled(rows));
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
    table(&mut out, &without_empty_throttled(rows));
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
    render_go(&mut out, &report.go);
    if let Some(tasks) = &report.tasks {
        render_tasks(&mut out, tasks, limit);
    }
    render_cpus(&mut out, &report.cpus);
    render_cgroups(&mut out, &report.cgroups, limit);
    let _ = writeln!(
        out,
        "\nRUNQ: waiting for a CPU after a wake-up or preemption; LAT: run-queue latency \
         (runnable → running); VOL/INVOL: voluntary/involuntary switches; MIGR: CPU migrations."
    );
    if report.processes.iter().any(|p| p.off_cpu.throttled_ns > 0) {
        let _ = writeln!(
            out,
            "THROTTLED: runnable, but switched out because its cgroup ran out of CPU quota (not in RUNQ \
             nor in LAT)."
        );
    }
    if report.tasks.is_some() {
        let _ = writeln!(
            out,
            "Tasks: CFS-STOLEN: the runtime had the task running while its thread waited for a CPU; \
             BLOCKED: its thread slept in the kernel (or in a blocking call); QUEUE: runnable in a \
             runtime queue; STOLEN: runs taken from another P's queue."
        );
    }
    out
}

/// A table row of fixed texts (a header).
fn cells(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

fn dash(ns: u64) -> String {
    if ns == 0 { "-".to_string() } else { duration_ns(ns) }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "-".into() } else { format!("{:.1}%", part as f64 * 100.0 / whole as f64) }
}

fn render_tasks(out: &mut String, s: &TaskSection, limit: usize) {
    let t = &s.totals;
    let pids: Vec<String> = s.processes.iter().map(u32::to_string).collect();
    let _ = writeln!(out, "\nUser-level tasks: {} in PID {}", count(s.tasks_total), pids.join(", "));
    let mut running = format!(
        "  running {}: on CPU {}, CFS-stolen {} ({} of running)",
        duration_ns(t.running_ns),
        duration_ns(t.on_cpu_ns),
        duration_ns(t.cfs_stolen_ns),
        percent(t.cfs_stolen_ns, t.running_ns),
    );
    for (what, ns) in [
        ("thread blocked in the kernel", t.kernel_blocked_ns),
        ("in blocking calls", t.blocking_call_ns),
        ("unattributed", t.unaccounted_ns),
    ] {
        if ns > 0 {
            running.push_str(&format!(", {what} {}", duration_ns(ns)));
        }
    }
    let _ = writeln!(out, "{running}");
    let parked: Vec<String> =
        t.parked_ns.iter().map(|(r, ns)| format!("{} {}", reason(*r), duration_ns(*ns))).collect();
    let q = &s.queue_wait;
    let _ = writeln!(
        out,
        "  runtime queues: {} waits, {} in all, p50 {}, p99 {}, max {}; runs taken from another P's queue: {}",
        count(q.count),
        duration_ns(q.total_ns),
        duration_ns(q.p50_ns),
        duration_ns(q.p99_ns),
        duration_ns(q.max_ns),
        count(s.stolen)
    );
    let _ = writeln!(out, "  parked: {}", if parked.is_empty() { "never".into() } else { parked.join(", ") });

    for top in &s.by_cost {
        if top.top.is_empty() {
            continue;
        }
        let d = &top.per_task;
        let _ = writeln!(
            out,
            "\nTop tasks by {} ({} in all; per task: p50 {}, p99 {}, max {})",
            match top.cost {
                "cfs_stolen" => "CFS-stolen time",
                "queue_wait" => "runtime queue wait",
                "netpoll_park" => "time parked in the netpoller",
                "other_park" => "time parked otherwise",
                "on_cpu" => "on-CPU time",
                other => other,
            },
            duration_ns(top.total_ns),
            duration_ns(d.p50_ns),
            duration_ns(d.p99_ns),
            duration_ns(d.max_ns)
        );
        let mut rows = vec![cells(&["PID", "TASK", "TIME", "SHARE"])];
        for (pid, task, ns) in &top.top {
            let label = task_label(s, *pid, *task);
            rows.push(vec![pid.to_string(), label, duration_ns(*ns), percent(*ns, top.total_ns)]);
        }
        table(out, &rows);
    }

    let _ = writeln!(out, "\nTasks by running time{}", shown(limit, s.tasks.len()));
    let mut rows = vec![cells(&[
        "PID",
        "TASK",
        "RUNS",
        "ON-CPU",
        "CFS-STOLEN",
        "BLOCKED",
        "QUEUE",
        "Q p50",
        "Q p99",
        "Q max",
        "STOLEN",
        "NETPOLL",
        "PARKED",
        "THREADS",
        "TOP WAKER",
    ])];
    for r in s.tasks.iter().take(limit) {
        let c = &r.costs;
        let waker = r.wakers.iter().find(|w| !matches!(w.waker, crate::correlate::Waker::Spawn)).map(|w| {
            let who = match w.waker {
                crate::correlate::Waker::Task(id) => format!("task {id}"),
                other => format!("{other:?}").to_lowercase(),
            };
            format!("{who} ({})", count(w.count))
        });
        rows.push(vec![
            r.pid.to_string(),
            task_label(s, r.pid, r.task),
            count(r.runs),
            dash(c.on_cpu_ns),
            dash(c.cfs_stolen_ns),
            dash(c.kernel_blocked_ns + c.blocking_call_ns),
            dash(c.queue_ns),
            dash(r.queue_wait.p50_ns),
            dash(r.queue_wait.p99_ns),
            dash(r.queue_wait.max_ns),
            count(r.stolen),
            dash(c.netpoll_ns),
            dash(c.other_park_ns()),
            r.threads.len().to_string(),
            waker.unwrap_or_else(|| "-".into()),
        ]);
    }
    table(out, &rows);
    if !s.by_wait_reason.is_empty() {
        let _ = writeln!(out, "\nTime parked by the runtime's wait reason");
        let total = super::sum(s.by_wait_reason.iter().map(|(_, ns)| *ns));
        let mut rows = vec![cells(&["", "WAIT REASON", "TIME", "SHARE"])];
        for (name, ns) in s.by_wait_reason.iter().take(limit) {
            let name = name.strip_prefix("waitReason").unwrap_or(name);
            rows.push(vec![String::new(), name.to_string(), duration_ns(*ns), percent(*ns, total)]);
        }
        table(out, &rows);
    }
    if !s.by_start_function.is_empty() {
        let _ = writeln!(out, "\nTasks by start function{}", shown(limit, s.by_start_function.len()));
        let mut rows = vec![cells(&[
            "PID",
            "START FUNCTION",
            "TASKS",
            "EXITED",
            "ON-CPU",
            "CFS-STOLEN",
            "BLOCKED",
            "QUEUE",
            "NETPOLL",
            "PARKED",
        ])];
        for g in s.by_start_function.iter().take(limit) {
            let c = &g.costs;
            rows.push(vec![
                g.pid.to_string(),
                g.start_function.clone(),
                count(g.tasks),
                count(g.exited),
                dash(c.on_cpu_ns),
                dash(c.cfs_stolen_ns),
                dash(c.kernel_blocked_ns + c.blocking_call_ns),
                dash(c.queue_ns),
                dash(c.netpoll_ns),
                dash(c.other_park_ns()),
            ]);
        }
        table(out, &rows);
        if let Some(cols) = &s.columns {
            let _ = writeln!(
                out,
                "\nTasks alive over time by start function (from {:.3} s, columns of {}){}",
                cols.from_s,
                duration_ns(cols.width_ns),
                shown(limit, s.by_start_function.len())
            );
            let mut rows = vec![["PID", "START FUNCTION"].iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            rows[0].extend((0..cols.count).map(|i| format!("+{}", duration_ns(cols.width_ns * i as u64))));
            rows[0].push(String::new());
            for g in s.by_start_function.iter().take(limit) {
                let mut r = vec![g.pid.to_string(), g.start_function.clone()];
                r.extend(g.alive.iter().map(|n| count(*n)));
                r.push(String::new());
                rows.push(r);
            }
            table(out, &rows);
            if !cols.exits_known.is_empty() {
                let _ = writeln!(
                    out,
                    "  (with creations and exits traced, a task is alive from its creation to its exit)"
                );
            } else {
                let _ = writeln!(
                    out,
                    "  (a task counts from when it was first seen to when it was last seen running)"
                );
            }
        }
    }
}

fn reason(r: ParkReason) -> &'static str {
    match r {
        ParkReason::Netpoll => "netpoll",
        ParkReason::Timer => "timer",
        ParkReason::Channel => "channel",
        ParkReason::Yield => "yield",
        ParkReason::Other => "other",
    }
}

fn render_go(out: &mut String, programs: &[super::GoReport]) {
    for r in programs {
        let p = &r.process;
        let _ = writeln!(
            out,
            "\nGo program: PID {} {} ({}, module {})",
            p.pid, p.binary, p.go_version, p.main_module
        );
        let procs = p.gomaxprocs.map_or("not read (no symbol table)".to_string(), |n| n.to_string());
        let cpus = p.cpus_allowed.map_or("unknown".to_string(), |n| n.to_string());
        let quota = r.quota_cpus.map_or(String::new(), |q| format!(", CPU quota {q:.2} CPUs"));
        let _ = writeln!(out, "  GOMAXPROCS {procs}, CPUs it may use {cpus}{quota}");
        match (p.level.as_str(), &p.problem) {
            ("full", _) => {
                let _ = writeln!(
                    out,
                    "  goroutines: the runtime's scheduler probed (full level: runs, parks with wait reasons, wake-ups, creations, exits)"
                );
            }
            ("identity", _) => {
                let from =
                    if p.layout_source == "dwarf" { "its DWARF" } else { "the table for its Go version" };
                let _ = writeln!(
                    out,
                    "  goroutines: read at every switch-out and CPU sample (identity level; runtime layout from {from})"
                );
            }
            (_, Some(why)) => {
                let _ = writeln!(out, "  goroutines: not followed: {why}");
            }
            _ => {
                let _ = writeln!(out, "  goroutines: not followed");
            }
        }
        if let Some(d) = &r.stw {
            let _ = writeln!(
                out,
                "  stop-the-world: {} pauses, {} in all; p50 {}, p99 {}, max {}; up to {} goroutines running or runnable held back by one",
                count(d.count),
                duration_ns(d.total_ns),
                duration_ns(d.p50_ns),
                duration_ns(d.p99_ns),
                duration_ns(d.max_ns),
                count(r.stw_held_back_max)
            );
            let mut rows = vec![cells(&["", "REASON", "PAUSES", "TOTAL", "p50", "MAX"])];
            for (reason, d) in &r.stw_by_reason {
                rows.push(vec![
                    String::new(),
                    reason.strip_prefix("stw").unwrap_or(reason).to_string(),
                    count(d.count),
                    duration_ns(d.total_ns),
                    duration_ns(d.p50_ns),
                    duration_ns(d.max_ns),
                ]);
            }
            table(out, &rows);
            let held: Vec<String> = r
                .stw_held_back_by_start_function
                .iter()
                .take(5)
                .map(|(f, n)| format!("{f} ({n} of {})", count(d.count)))
                .collect();
            if !held.is_empty() {
                let _ = writeln!(out, "  held back most often: {}", held.join(", "));
            }
        }
    }
}

/// A task as the tables name it: its id, and the function it started with when known.
fn task_label(s: &TaskSection, pid: u32, task: u64) -> String {
    match s.tasks.iter().find(|r| r.pid == pid && r.task == task).and_then(|r| r.start_function.as_deref()) {
        Some(f) => format!("{task} {f}"),
        None => task.to_string(),
    }
}

fn render_cpus(out: &mut String, cpus: &[CpuReport]) {
    if cpus.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nCPUs (what CFS did to the traced threads)");
    let mut rows = vec![cells(&[
        "CPU",
        "",
        "BUSY",
        "SWITCHES",
        "PREEMPTED",
        "LAT p50",
        "LAT p99",
        "LAT max",
        "MIGR IN",
        "MIGR OUT",
        "VRT SPREAD p50",
        "p99",
        "max",
        "TOP PREEMPTER",
    ])];
    for c in cpus {
        let lat = &c.runqueue_latency;
        let spread = &c.vruntime_spread;
        rows.push(vec![
            c.cpu.to_string(),
            String::new(),
            dash(c.busy_ns),
            count(c.switches),
            count(c.preemptions),
            dash(lat.p50_ns),
            dash(lat.p99_ns),
            dash(lat.max_ns),
            count(c.migrations_in),
            count(c.migrations_out),
            dash(spread.p50_ns),
            dash(spread.p99_ns),
            dash(spread.max_ns),
            c.preempted_by
                .first()
                .map_or("-".into(), |p| format!("{}/{} ({})", p.comm, p.tid, count(p.count))),
        ]);
    }
    table(out, &rows);
}

fn shown(limit: usize, total: usize) -> String {
    if total > limit {
        format!(" (top {limit} of {}; --limit to see more)", count(total as u64))
    } else {
        String::new()
    }
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
        TraceTarget::Cgroups { paths } => format!("the processes of cgroup {} and below", paths.join(", ")),
    };
    let _ = writeln!(out, "  target:    {target}");
    let span = match t.window_s {
        Some(_) => "the whole recording".to_string(),
        None => duration_ns(t.duration_ns),
    };
    let _ = writeln!(out, "  span:      {span}, {} events", count(t.events));
    if let Some([from, to]) = t.window_s {
        let _ = writeln!(
            out,
            "  window:    {from:.3} s to {to:.3} s after the recording started ({}): the numbers below are those inside it",
            duration_ns(t.duration_ns)
        );
    }
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
    if let Some(f) = &t.write_failure {
        let _ = writeln!(
            out,
            "  WARNING:   {} events the recorder received after the failed write could not be written",
            count(f.unwritten_events)
        );
    }
    let l = &r.lost;
    let missing = l
        .missing_after_ns
        .map(|ns| format!("; every event after {} into the trace was not recorded", duration_ns(ns)));
    if !l.counted {
        let _ = writeln!(out, "  lost:      UNKNOWN: the trace ends before the first loss count was written");
    } else if l.total == 0 && l.filter_table_full == 0 {
        match &missing {
            None => {
                let _ = writeln!(out, "  lost:      0 events");
            }
            Some(m) => {
                let _ = writeln!(out, "  LOST:      0 events counted until the recording stopped{m}");
            }
        }
    } else {
        let kinds: Vec<String> = l.by_kind.iter().map(|(k, n)| format!("{k} {}", count(*n))).collect();
        let _ = writeln!(
            out,
            "  LOST:      {} events ({}){}: the numbers below undercount",
            count(l.total),
            kinds.join(", "),
            missing.unwrap_or_default()
        );
        if l.filter_table_full > 0 {
            let _ = writeln!(
                out,
                "  LOST:      {} child processes not followed (kernel filter table full)",
                count(l.filter_table_full)
            );
        }
    }
    if t.missed_switch_ins > 0 || t.missed_switch_outs > 0 {
        let _ = writeln!(
            out,
            "  note:      {} switch-ins and {} switch-outs were not reported by the kernel (tasks hidden \
             from tracing ran next to them, or events were lost); {} around them is not attributed",
            count(t.missed_switch_ins),
            count(t.missed_switch_outs),
            duration_ns(t.unaccounted_ns)
        );
    }
    if t.unknown_records > 0 || t.unknown_chunks > 0 {
        let _ = writeln!(
            out,
            "  note:      {} records and {} chunks of kinds this version does not know were skipped",
            count(t.unknown_records),
            count(t.unknown_chunks)
        );
    }
    if t.unplaced.total() > 0 {
        let _ = writeln!(
            out,
            "  INCONSISTENT: {}; the numbers around them are approximate",
            t.unplaced.describe().join(", ")
        );
    }
}

const COLUMNS: [&str; 16] = [
    "",
    "",
    "",
    "ON-CPU",
    "RUNQ",
    "THROTTLED",
    "SLEEP",
    "EPOLL",
    "OTHER",
    "LAT n",
    "LAT p50",
    "LAT p99",
    "LAT max",
    "VOL",
    "INVOL",
    "MIGR",
];

fn row_header(id: &str, name: &str, extra: Option<&str>) -> Vec<String> {
    let mut r = cells(&COLUMNS);
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
        d(off.throttled_ns),
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

/// Index of the THROTTLED column in the process and thread tables.
const THROTTLED_COLUMN: usize = 5;

/// The rows without the THROTTLED column when no row has throttled time (no CPU quota ran out).
fn without_empty_throttled(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    if rows.iter().skip(1).all(|r| r.get(THROTTLED_COLUMN).is_none_or(|c| c == "-")) {
        for r in &mut rows {
            if r.len() > THROTTLED_COLUMN {
                r.remove(THROTTLED_COLUMN);
            }
        }
    }
    rows
}

fn render_cgroups(out: &mut String, cgroups: &[super::cgroups::CgroupReport], limit: usize) {
    if cgroups.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nCgroups (of the cpu controller) by on-CPU time{}", shown(limit, cgroups.len()));
    let mut rows = vec![cells(&[
        "",
        "CGROUP",
        "PROCS",
        "THREADS",
        "ON-CPU",
        "CPUS",
        "SHARE",
        "QUOTA",
        "WEIGHT",
        "CPUSET",
        "PERIODS",
        "THROTTLED",
        "THR TIME",
        "THR WAITS",
        "WAIT p50",
        "WAIT max",
        "LAT p50",
        "LAT p99",
        "PREEMPTED BY",
    ])];
    for g in cgroups.iter().take(limit) {
        let t = g.throttling.as_ref();
        let cpus = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.2}"));
        let quota = match (g.quota_cpus, g.effective_quota_cpus) {
            (Some(q), _) => cpus(Some(q)),
            (None, Some(e)) => format!("({e:.2})"),
            (None, None) => "-".into(),
        };
        let preempted_by: Vec<String> =
            g.preempted_by.iter().take(2).map(|(p, n)| format!("{p} ({})", count(*n))).collect();
        rows.push(vec![
            String::new(),
            g.path.clone(),
            g.processes.to_string(),
            g.threads.to_string(),
            dash(g.on_cpu_ns),
            format!("{:.2}", g.cpus_used),
            format!("{:.1}%", g.share * 100.0),
            quota,
            g.weight.or(g.shares).map_or("-".into(), |w| w.to_string()),
            g.cpuset.clone().unwrap_or_else(|| "-".into()),
            t.map_or("-".into(), |t| count(t.periods)),
            t.map_or("-".into(), |t| count(t.throttled_periods)),
            t.map_or("-".into(), |t| dash(t.throttled_ns)),
            count(g.throttled_waits.count),
            dash(g.throttled_waits.p50_ns),
            dash(g.throttled_waits.max_ns),
            dash(g.runqueue_latency.p50_ns),
            dash(g.runqueue_latency.p99_ns),
            if preempted_by.is_empty() { "-".into() } else { preempted_by.join(", ") },
        ]);
    }
    table(out, &rows);
    let throttled: Vec<String> = cgroups
        .iter()
        .take(limit)
        .filter(|g| !g.throttled_threads.is_empty())
        .map(|g| {
            let who: Vec<String> = g
                .throttled_threads
                .iter()
                .map(|t| format!("{}/{} {}× {}", t.comm, t.tid, count(t.waits), duration_ns(t.throttled_ns)))
                .collect();
            format!("  {}: {}", g.path, who.join(", "))
        })
        .collect();
    if !throttled.is_empty() {
        let _ = writeln!(out, "  Running when the quota ran out (throttled waits, time):");
        for line in throttled {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "  CPUS: CPUs used on average; QUOTA: its CPU quota in CPUs ((x): an ancestor's); PERIODS, \
         THROTTLED, THR TIME: from its cpu.stat (throttled time summed over CPUs); THR WAITS: its \
         threads' waits from a throttled switch-out to the next run."
    );
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
