//! `sched-trace report`: the correlation's numbers, per thread and per process, as text or JSON.
//! Lost events are part of every report, never hidden.

pub mod cgroups;
pub mod tasks;
pub mod text;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;

pub use crate::filter::Filter;
use crate::{
    correlate::{Correlation, ThreadStats},
    trace::{TaskNames, TraceTarget},
};
pub use tasks::{CpuReport, TaskSection};

#[derive(Debug, Serialize)]
pub struct Report {
    pub trace: TraceSummary,
    pub lost: LostEvents,
    /// Processes, by on-CPU time.
    pub processes: Vec<ProcessReport>,
    /// Threads, by on-CPU time.
    pub threads: Vec<ThreadReport>,
    /// User-level (USDT) probes attached, with their hits.
    pub user_probes: Vec<UserProbeReport>,
    /// Go programs that were traced, and how their goroutines were followed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub go: Vec<GoReport>,
    /// User-level tasks joined with their threads' scheduling (when the trace has runtime probes).
    pub tasks: Option<TaskSection>,
    /// What CFS did on each CPU (to the traced threads).
    pub cpus: Vec<CpuReport>,
    /// The traced threads by cgroup (of the hierarchy with the `cpu` controller): CPU used
    /// against the quota, throttling, run-queue latency, and preemptions by other cgroups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<cgroups::CgroupReport>,
    /// Samples of every metric (completed waits and runs, see `correlate::samples`) of the
    /// selected threads and tasks: what a heat map of that metric counts.
    pub samples: BTreeMap<&'static str, u64>,
    /// The filters this report was built with (its threads, processes and tasks are those
    /// they select; the trace summary and the loss counts are the whole trace's).
    pub filter: Filter,
}

/// A traced Go program: what the recorder found, and its stop-the-world pauses.
#[derive(Debug, Serialize)]
pub struct GoReport {
    #[serde(flatten)]
    pub process: crate::trace::format::GoProcess,
    /// Its stop-the-world pauses (full level), all of them and by reason (largest total first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stw: Option<Durations>,
    pub stw_by_reason: Vec<(String, Durations)>,
    /// Goroutines running or runnable when each pause began, summed over the pauses, and the
    /// most any one pause held back...
    pub stw_held_back: u64,
    pub stw_held_back_max: u64,
    /// ...and by start function: how many pauses held back goroutines of it (most first).
    pub stw_held_back_by_start_function: Vec<(String, u64)>,
    /// Its cgroup's CPU quota in CPUs (the tightest along its ancestry): with GOMAXPROCS above
    /// it, the runtime runs more threads than the quota lets run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_cpus: Option<f64>,
}

impl GoReport {
    /// `start_function`: the name of a goroutine of the process by its id.
    fn build(
        p: &crate::trace::format::GoProcess,
        pauses: &[crate::correlate::pauses::RuntimePause],
        start_function: impl Fn(u64) -> Option<String>,
        quota_cpus: Option<f64>,
    ) -> GoReport {
        let mine: Vec<_> = pauses.iter().filter(|q| q.pid == p.pid).collect();
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for q in &mine {
            let mut names: Vec<String> = q
                .held_back
                .iter()
                .map(|&g| start_function(g).unwrap_or_else(|| "(unnamed)".into()))
                .collect();
            names.sort_unstable();
            names.dedup();
            for n in names {
                *held.entry(n).or_default() += 1;
            }
        }
        let mut stw_held_back_by_start_function: Vec<(String, u64)> = held.into_iter().collect();
        stw_held_back_by_start_function.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for q in &mine {
            by.entry(q.reason.as_str()).or_default().push(q.end.saturating_sub(q.start));
        }
        let mut stw_by_reason: Vec<(String, Durations)> =
            by.into_iter().map(|(r, v)| (r.to_string(), Durations::of(v))).collect();
        stw_by_reason.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(&b.0)));
        let all = Durations::of(mine.iter().map(|q| q.end.saturating_sub(q.start)).collect());
        GoReport {
            process: p.clone(),
            stw: (all.count > 0).then_some(all),
            stw_by_reason,
            stw_held_back: mine.iter().map(|q| q.held_back.len() as u64).sum(),
            stw_held_back_max: mine.iter().map(|q| q.held_back.len() as u64).max().unwrap_or(0),
            stw_held_back_by_start_function,
            quota_cpus,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UserProbeReport {
    pub provider: String,
    pub name: String,
    pub binary: String,
    pub hits: u64,
}

#[derive(Debug, Serialize)]
pub struct TraceSummary {
    pub path: String,
    pub recorder: String,
    pub hostname: String,
    pub kernel_release: String,
    pub cpus: u32,
    pub target: TraceTarget,
    pub command_line: Vec<String>,
    /// Wall-clock time of the first event (RFC 3339, UTC).
    pub started_at: String,
    pub duration_ns: u64,
    /// The time the numbers are about, in seconds from the start of the recording, when the
    /// report was asked for a part of it (`--from`, `--to`).
    pub window_s: Option<[f64; 2]>,
    pub events: u64,
    /// The recorder closed the file (an end marker), with or without a write failure.
    pub closed_cleanly: bool,
    pub stop_reason: Option<String>,
    /// Writing the trace failed (a full disk): nothing after `last_written_ns` was recorded.
    pub write_failure: Option<crate::trace::WriteFailure>,
    pub truncated: Option<TruncationReport>,
    /// What could not be placed as the file had it (see [`crate::correlate::Unplaced`]).
    pub unplaced: crate::correlate::Unplaced,
    /// Switch-ins of threads the trace had running already: their switch-out was not reported
    /// (like the missed switch-ins, a task hidden from tracing, or a loss).
    pub missed_switch_outs: u64,
    /// Records and chunks of kinds this version does not know, skipped.
    pub unknown_records: u64,
    pub unknown_chunks: u64,
    /// Switch-ins the kernel did not report (see `correlate::threads`), and the time around them
    /// that could not be attributed to any state.
    pub missed_switch_ins: u64,
    pub unaccounted_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct TruncationReport {
    pub offset: u64,
    pub discarded_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct LostEvents {
    /// Records lost in the kernel (ring buffer full) or dropped by the recorder.
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Child processes that were not followed because the kernel's filter table was full.
    pub filter_table_full: u64,
    /// False when the trace holds no drop counters (cut off before the first snapshot): the
    /// loss is then unknown, not zero.
    pub counted: bool,
    /// When the recording did not end cleanly (killed, crashed, or writing failed), events
    /// after this many ns into the trace were not recorded at all, and the counts above are
    /// only those of the time before.
    pub missing_after_ns: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub from_wakeup: u64,
    pub from_preemption: u64,
    /// The time of those that followed a wake-up, and of those that followed a preemption.
    pub from_wakeup_ns: u64,
    pub from_preemption_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub total_ns: u64,
}

/// A distribution of durations.
#[derive(Debug, Default, Serialize)]
pub struct Durations {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub total_ns: u64,
}

impl Durations {
    pub fn of(mut values: Vec<u64>) -> Durations {
        let (p50_ns, p99_ns, max_ns) = percentiles(&mut values);
        Durations {
            count: values.len() as u64,
            p50_ns,
            p99_ns,
            max_ns,
            total_ns: sum(values.iter().copied()),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct OffCpuReport {
    pub total_ns: u64,
    /// Runnable, waiting for a CPU.
    pub runqueue_ns: u64,
    /// Runnable, but its cgroup was throttled (out of CPU quota).
    pub throttled_ns: u64,
    pub sleeping_ns: u64,
    pub epoll_ns: u64,
    /// Uninterruptible or otherwise blocked.
    pub other_ns: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Switches {
    pub voluntary: u64,
    pub involuntary: u64,
}

/// Another thread and how often it did something to this one.
#[derive(Debug, Serialize)]
pub struct Peer {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct ThreadReport {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub on_cpu_ns: u64,
    pub off_cpu: OffCpuReport,
    pub runqueue_latency: Latency,
    /// Waits of a throttled cgroup: switch-out at the end of its quota → switch-in.
    pub throttled: Durations,
    /// Interruptible sleeps (outside epoll) ended by a wake-up: switch-out → wake-up.
    pub sleeps: Durations,
    pub switches: Switches,
    pub migrations: u64,
    /// Who woke it, most frequent first.
    pub wakers: Vec<Peer>,
    /// Who took its CPU when it was preempted, most frequent first.
    pub preempted_by: Vec<Peer>,
    pub exited: bool,
    /// Of `migrations`, those the trace shows only by the thread turning up on another CPU.
    pub inferred_migrations: u64,
    /// Switch-ins from a sleep whose wake-up the kernel did not report.
    pub missed_wakeups: u64,
    pub missed_switch_ins: u64,
    pub missed_switch_outs: u64,
    /// Time not attributed to any state because a switch-in was missing.
    pub unaccounted_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub threads: u32,
    /// The CPUs its threads' affinities allow (within its cpuset), when the trace says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_cpus: Option<u32>,
    /// Its cgroup's CPU quota in CPUs (the tightest along its ancestry), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_cpus: Option<f64>,
    pub on_cpu_ns: u64,
    pub off_cpu: OffCpuReport,
    pub runqueue_latency: Latency,
    pub switches: Switches,
    pub migrations: u64,
    pub wakers: Vec<Peer>,
}

/// Columns of the tasks-alive-over-time counts.
const ALIVE_COLUMNS: usize = 10;

/// How many peers (wakers, preempters) a report lists per thread or process.
const TOP_PEERS: usize = 5;

impl Report {
    pub fn build(path: &Path, c: &Correlation) -> Report {
        Self::build_filtered(path, c, &Filter::default())
    }

    /// A report on the threads, processes and tasks `filter` selects.
    /// A report on the threads, processes, tasks and CPUs `filter` selects. The time window is
    /// the correlation's: make it with the filter's window ([`Filter::window`]).
    pub fn build_filtered(path: &Path, c: &Correlation, filter: &Filter) -> Report {
        let filter = &filter.with_cgroups(&c.tables.cgroups);
        let names = TaskNames::new(&c.tables.tasks);
        let peers = |m: &rustc_hash::FxHashMap<u32, u64>| top_peers(m, &names);
        let selected: Vec<&ThreadStats> = c
            .threads
            .iter()
            .filter(|t| {
                filter.thread(t.tid, t.pid, &names) && filter.cpu.is_none_or(|cpu| t.ran_on.contains(&cpu))
            })
            .collect();

        let mut threads: Vec<ThreadReport> = selected
            .iter()
            .map(|t| {
                let (comm, pid) = match names.last(t.tid) {
                    Some((comm, pid)) if !comm.is_empty() => {
                        (comm.to_string(), if t.pid == 0 { pid } else { t.pid })
                    }
                    _ => ("?".to_string(), t.pid),
                };
                ThreadReport {
                    tid: t.tid,
                    pid,
                    comm,
                    on_cpu_ns: t.on_cpu_ns,
                    off_cpu: off_cpu(&[t]),
                    runqueue_latency: latency(&[t]),
                    throttled: Durations::of(t.throttled_waits_ns.clone()),
                    sleeps: Durations::of(t.sleeps_ns.clone()),
                    switches: Switches {
                        voluntary: t.voluntary_switches,
                        involuntary: t.involuntary_switches,
                    },
                    migrations: t.migrations,
                    wakers: peers(&t.wakers),
                    preempted_by: peers(&t.preempted_by),
                    exited: t.exited,
                    inferred_migrations: t.inferred_migrations,
                    missed_wakeups: t.missed_wakeups,
                    missed_switch_ins: t.missed_switch_ins,
                    missed_switch_outs: t.missed_switch_outs,
                    unaccounted_ns: t.unaccounted_ns,
                }
            })
            .collect();
        threads.sort_by(|a, b| b.on_cpu_ns.cmp(&a.on_cpu_ns).then(a.tid.cmp(&b.tid)));

        let mut by_pid: BTreeMap<u32, Vec<&ThreadStats>> = BTreeMap::new();
        for t in &selected {
            by_pid.entry(t.pid).or_default().push(t);
        }
        let membership = c.tables.cgroups.membership();
        let mut processes: Vec<ProcessReport> = by_pid
            .into_iter()
            .map(|(pid, ts)| {
                let mut wakers: rustc_hash::FxHashMap<u32, u64> = Default::default();
                for t in &ts {
                    for (w, n) in &t.wakers {
                        *wakers.entry(*w).or_default() += n;
                    }
                }
                let comm = names
                    .last(pid)
                    .filter(|(c, _)| !c.is_empty())
                    .or_else(|| ts.iter().find_map(|t| names.last(t.tid)))
                    .map(|(c, _)| c.to_string())
                    .unwrap_or_else(|| "?".into());
                let (usable_cpus, quota_cpus) = cgroups::process_cpus(&c.tables.cgroups, &membership, pid);
                ProcessReport {
                    pid,
                    comm,
                    threads: ts.len() as u32,
                    usable_cpus,
                    quota_cpus,
                    on_cpu_ns: sum(ts.iter().map(|t| t.on_cpu_ns)),
                    off_cpu: off_cpu(&ts),
                    runqueue_latency: latency(&ts),
                    switches: Switches {
                        voluntary: ts.iter().map(|t| t.voluntary_switches).sum(),
                        involuntary: ts.iter().map(|t| t.involuntary_switches).sum(),
                    },
                    migrations: ts.iter().map(|t| t.migrations).sum(),
                    wakers: peers(&wakers),
                }
            })
            .collect();
        processes.sort_by(|a, b| b.on_cpu_ns.cmp(&a.on_cpu_ns).then(a.pid.cmp(&b.pid)));

        let drops = c.tables.drops.clone().unwrap_or_default();
        let lost = LostEvents {
            total: drops.lost_records(),
            by_kind: drops.lost_by_kind().into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
            filter_table_full: drops.filter_table_full(),
            counted: c.tables.drops.is_some(),
            missing_after_ns: match &c.tables.end {
                Some(end) => end.write_failure.as_ref().map(|f| f.last_written_ns.saturating_sub(c.first_ts)),
                None => Some(c.last_ts.saturating_sub(c.first_ts)),
            },
        };
        let info = &c.info;
        let wall_ns = c.first_ts as i64 + info.realtime_offset_ns;
        let started_at = if wall_ns > 0 {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(wall_ns as u64)).to_string()
        } else {
            String::new()
        };
        let trace = TraceSummary {
            path: path.display().to_string(),
            recorder: info.recorder.clone(),
            hostname: info.hostname.clone(),
            kernel_release: info.kernel_release.clone(),
            cpus: info.online_cpus.len() as u32,
            target: info.target.clone(),
            command_line: info.command_line.clone(),
            started_at,
            duration_ns: {
                let w = filter.window(info.start_ns);
                c.last_ts.min(w.to).saturating_sub(c.first_ts.max(w.from))
            },
            window_s: (filter.from_s.is_some() || filter.to_s.is_some()).then(|| {
                let end = c.last_ts.saturating_sub(info.start_ns) as f64 / 1e9;
                [filter.from_s.unwrap_or(0.0), filter.to_s.unwrap_or(end).min(end)]
            }),
            events: c.tables.events,
            closed_cleanly: c.tables.end.is_some(),
            stop_reason: c.tables.end.as_ref().map(|e| e.stop_reason.clone()),
            write_failure: c.tables.end.as_ref().and_then(|e| e.write_failure.clone()),
            truncated: c
                .tables
                .truncation
                .as_ref()
                .map(|t| TruncationReport { offset: t.offset, discarded_bytes: t.discarded_bytes }),
            unplaced: c.unplaced(),
            missed_switch_outs: c.threads.iter().map(|t| t.missed_switch_outs).sum(),
            unknown_records: c.tables.unknown_records,
            unknown_chunks: c.tables.unknown_chunks,
            missed_switch_ins: c.threads.iter().map(|t| t.missed_switch_ins).sum(),
            unaccounted_ns: sum(c.threads.iter().map(|t| t.unaccounted_ns)),
        };
        let user_probes = info
            .user_probes
            .iter()
            .map(|p| UserProbeReport {
                provider: p.provider.clone(),
                name: p.name.clone(),
                binary: p.binary.clone(),
                hits: c.user_probe_hits.get(&p.index).copied().unwrap_or(0),
            })
            .collect();
        let tasks: Vec<_> = c.tasks.iter().filter(|t| filter.task(t, &names)).collect();
        let goroutine_names: rustc_hash::FxHashMap<(u32, u64), String> =
            c.tasks.iter().filter_map(|t| Some(((t.pid, t.task), t.name.clone()?))).collect();
        let samples = crate::correlate::Metric::ALL
            .into_iter()
            .map(|m| {
                let n = if m.of_tasks() {
                    tasks.iter().map(|t| t.samples.get(m)).sum()
                } else {
                    selected.iter().map(|t| t.samples.get(m)).sum()
                };
                (m.name(), n)
            })
            .collect();
        Report {
            trace,
            lost,
            processes,
            threads,
            user_probes,
            go: c
                .tables
                .go_processes
                .iter()
                .filter(|p| filter.pid.is_none_or(|pid| pid == p.pid))
                .map(|p| {
                    GoReport::build(
                        p,
                        &c.pauses,
                        |goid| goroutine_names.get(&(p.pid, goid)).cloned(),
                        cgroups::process_cpus(&c.tables.cgroups, &membership, p.pid).1,
                    )
                })
                .collect(),
            tasks: TaskSection::build(&tasks, {
                let w = filter.window(info.start_ns);
                let exits_known =
                    c.tables.go_processes.iter().filter(|p| p.level == "full").map(|p| p.pid).collect();
                let from = c.first_ts.max(w.from);
                let to = c.last_ts.min(w.to).max(from.saturating_add(1));
                Some(tasks::Columns::new(info.start_ns, from, to, ALIVE_COLUMNS, exits_known))
            }),
            samples,
            cpus: tasks::cpu_reports(&c.cpus, &names)
                .into_iter()
                .filter(|r| filter.cpu.is_none_or(|cpu| cpu == r.cpu))
                .collect(),
            cgroups: cgroups::build(c, &selected, &names, filter.window(info.start_ns)),
            filter: filter.clone(),
        }
    }
}

fn off_cpu(ts: &[&ThreadStats]) -> OffCpuReport {
    let mut o = OffCpuReport {
        runqueue_ns: sum(ts.iter().map(|t| t.runqueue_ns)),
        throttled_ns: sum(ts.iter().map(|t| t.throttled_ns)),
        sleeping_ns: sum(ts.iter().map(|t| t.sleeping_ns)),
        epoll_ns: sum(ts.iter().map(|t| t.epoll_ns)),
        other_ns: sum(ts.iter().map(|t| t.blocked_ns)),
        total_ns: 0,
    };
    o.total_ns = sum([o.runqueue_ns, o.throttled_ns, o.sleeping_ns, o.epoll_ns, o.other_ns]);
    o
}

pub(crate) fn latency(ts: &[&ThreadStats]) -> Latency {
    let mut all: Vec<u64> = ts.iter().flat_map(|t| t.latencies_ns.iter().copied()).collect();
    if all.is_empty() {
        return Latency::default();
    }
    let (p50_ns, p99_ns, max_ns) = percentiles(&mut all);
    let count = all.len() as u64;
    let total = sum(all.iter().copied());
    let from_wakeup: u64 = ts.iter().map(|t| t.latencies_from_wakeup).sum();
    let from_wakeup_ns = sum(ts.iter().map(|t| t.latencies_from_wakeup_ns));
    Latency {
        count,
        from_wakeup,
        from_preemption: count - from_wakeup,
        from_wakeup_ns,
        from_preemption_ns: total.saturating_sub(from_wakeup_ns),
        avg_ns: total / count,
        p50_ns,
        p99_ns,
        max_ns,
        total_ns: total,
    }
}

/// A sum of durations that stops at the largest one a u64 holds (a trace that contradicts
/// itself can have threads overlap on one CPU, or tasks on one thread).
pub fn sum(durations: impl IntoIterator<Item = u64>) -> u64 {
    durations.into_iter().fold(0u64, u64::saturating_add)
}

/// The index of the nearest-rank `p` percentile among `n` sorted values (`n` > 0).
fn rank(n: usize, p: f64) -> usize {
    (((p / 100.0) * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// The nearest-rank p50 and p99 and the maximum of `values`, found by selection instead of a
/// sort: a report holds millions of run-queue latencies per thread,
/// process and CPU, and sorting them was a sixth of its time. Reorders `values`.
pub fn percentiles(values: &mut [u64]) -> (u64, u64, u64) {
    if values.is_empty() {
        return (0, 0, 0);
    }
    let (i50, i99) = (rank(values.len(), 50.0), rank(values.len(), 99.0));
    let (below, &mut p99, above) = values.select_nth_unstable(i99);
    let max = above.iter().copied().max().unwrap_or(p99);
    let p50 = if i50 == i99 { p99 } else { *below.select_nth_unstable(i50).1 };
    (p50, p99, max)
}

fn top_peers(m: &rustc_hash::FxHashMap<u32, u64>, names: &TaskNames) -> Vec<Peer> {
    let mut v: Vec<(u32, u64)> = m.iter().map(|(k, n)| (*k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(TOP_PEERS);
    v.into_iter()
        .map(|(tid, count)| Peer {
            tid,
            pid: names.last(tid).map(|(_, p)| p).unwrap_or(0),
            comm: names.display(tid),
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentile of sorted values: what [`percentiles`] must agree with.
    fn percentile(sorted: &[u64], p: f64) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        sorted[rank(sorted.len(), p)]
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // Selection gives what the sort gives, whatever the order and the repeats.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in [1usize, 2, 3, 99, 100, 101, 1000] {
            let mut values: Vec<u64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % 50
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let want = (percentile(&sorted, 50.0), percentile(&sorted, 99.0), *sorted.last().unwrap());
            assert_eq!(percentiles(&mut values), want, "{n} values");
        }
        assert_eq!(percentiles(&mut []), (0, 0, 0));
    }
}
