//! The report's user-task and CPU sections: the runtime's tasks joined with what CFS did to the
//! threads under them, and what CFS did on each CPU.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Durations, Peer, top_peers};
use crate::{
    correlate::{CpuStats, ParkReason, TaskStats, Waker},
    trace::TaskNames,
};

/// Where a set of tasks' time went. Running = on CPU + CFS-stolen + kernel-blocked + blocking
/// call + unaccounted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskCosts {
    pub running_ns: u64,
    pub on_cpu_ns: u64,
    /// The runtime had the task running while its thread waited for a CPU in CFS.
    pub cfs_stolen_ns: u64,
    /// Its thread slept in the kernel (page fault, lock) outside a blocking section.
    pub kernel_blocked_ns: u64,
    /// In a blocking section (its P handed off), its thread off CPU.
    pub blocking_call_ns: u64,
    /// Running, its thread's state unknown (missed switch-ins).
    pub unaccounted_ns: u64,
    /// Runnable, waiting in a runtime queue.
    pub queue_ns: u64,
    /// Parked in the netpoller.
    pub netpoll_ns: u64,
    /// Parked for another reason (timer, channel, other), by reason.
    pub parked_ns: BTreeMap<ParkReason, u64>,
}

impl TaskCosts {
    fn of(t: &TaskStats) -> TaskCosts {
        let mut c = TaskCosts::default();
        c.add(t);
        c
    }

    fn add(&mut self, t: &TaskStats) {
        let add = |total: &mut u64, ns: u64| *total = total.saturating_add(ns);
        add(&mut self.running_ns, t.running_ns());
        add(&mut self.on_cpu_ns, t.on_cpu_ns);
        add(&mut self.cfs_stolen_ns, t.cfs_stolen_ns);
        add(&mut self.kernel_blocked_ns, t.kernel_blocked_ns);
        add(&mut self.blocking_call_ns, t.blocking_call_ns);
        add(&mut self.unaccounted_ns, t.unaccounted_ns);
        add(&mut self.queue_ns, t.queue_ns);
        for (reason, ns) in &t.parked_ns {
            if *reason == ParkReason::Netpoll {
                add(&mut self.netpoll_ns, *ns);
            }
            add(self.parked_ns.entry(*reason).or_default(), *ns);
        }
    }

    /// Parked for any reason but the netpoller.
    pub fn other_park_ns(&self) -> u64 {
        super::sum(self.parked_ns.iter().filter(|(r, _)| **r != ParkReason::Netpoll).map(|(_, ns)| *ns))
    }
}

/// Who made a task runnable, and how often.
#[derive(Clone, Debug, Serialize)]
pub struct TaskWaker {
    #[serde(flatten)]
    pub waker: Waker,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct TaskReport {
    pub pid: u32,
    pub task: u64,
    /// The function it started with (goroutines), by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_function: Option<String>,
    /// Time parked by the runtime's own wait reason (Go's `waitReason*`), by name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parked_by_wait_reason: std::collections::BTreeMap<String, u64>,
    pub parent: Option<u64>,
    pub exited: bool,
    pub runs: u64,
    pub yields: u64,
    #[serde(flatten)]
    pub costs: TaskCosts,
    /// Each wait in a runtime queue (ready → run).
    pub queue_wait: Durations,
    pub local_queue_waits: u64,
    pub global_queue_waits: u64,
    /// Runs taken from another P's queue than the one it waited in.
    pub stolen: u64,
    /// The threads it ran on, and how often it changed thread between runs.
    pub threads: Vec<u32>,
    pub thread_changes: u64,
    /// Who made it runnable, most frequent first.
    pub wakers: Vec<TaskWaker>,
}

/// One cost, across tasks: its distribution over the tasks and the tasks it is largest for.
#[derive(Debug, Serialize)]
pub struct TopTasks {
    pub cost: &'static str,
    pub total_ns: u64,
    /// Over the tasks that have any of it.
    pub per_task: Durations,
    /// (pid, task, ns), largest first.
    pub top: Vec<(u32, u64, u64)>,
}

#[derive(Debug, Serialize)]
pub struct TaskSection {
    pub tasks_total: u64,
    pub processes: Vec<u32>,
    pub totals: TaskCosts,
    /// Every wait of every task in a runtime queue.
    pub queue_wait: Durations,
    pub stolen: u64,
    pub by_cost: Vec<TopTasks>,
    /// Every task (after the filters), by running time.
    pub tasks: Vec<TaskReport>,
    /// Tasks grouped by the function they started with (goroutines; empty otherwise), by
    /// running time: the way `go tool trace` groups goroutines.
    pub by_start_function: Vec<StartFunctionGroup>,
    /// Time parked by the runtime's own wait reason, over all tasks, longest first.
    pub by_wait_reason: Vec<(String, u64)>,
    /// The columns of the start-function groups' counts of tasks alive over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Columns>,
}

/// The tasks that started with one function.
#[derive(Debug, Serialize)]
pub struct StartFunctionGroup {
    pub pid: u32,
    pub start_function: String,
    pub tasks: u64,
    pub exited: u64,
    #[serde(flatten)]
    pub costs: TaskCosts,
    /// How many of them were alive in each column of [`TaskSection::columns`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alive: Vec<u64>,
}

/// The time over which task counts are given: equal columns from `from` to `to`.
#[derive(Clone, Debug, Serialize)]
pub struct Columns {
    /// Seconds after the recording started.
    pub from_s: f64,
    pub width_ns: u64,
    pub count: usize,
    /// Processes whose runtime reported creations and exits (Go's full level): a task of theirs
    /// that did not exit is alive to the end. Elsewhere a task is alive from when it was first
    /// seen to when it was last seen running.
    pub exits_known: Vec<u32>,
    #[serde(skip)]
    pub from_ns: u64,
    #[serde(skip)]
    pub to_ns: u64,
}

impl Columns {
    /// `count` columns over `[from_ns, to_ns)` of a recording that started at `start_ns`.
    pub fn new(start_ns: u64, from_ns: u64, to_ns: u64, count: usize, exits_known: Vec<u32>) -> Columns {
        let width_ns = to_ns.saturating_sub(from_ns).div_ceil(count.max(1) as u64).max(1);
        Columns {
            from_s: from_ns.saturating_sub(start_ns) as f64 / 1e9,
            width_ns,
            count: count.max(1),
            exits_known,
            from_ns,
            to_ns,
        }
    }

    /// Adds `t` to the columns of `alive` its life overlaps.
    fn add(&self, alive: &mut [u64], t: &TaskStats) {
        let seen = t.run_intervals.iter().map(|r| r.end).max().unwrap_or(t.first_ts).max(t.first_ts);
        let last = if !t.exited && self.exits_known.contains(&t.pid) { self.to_ns } else { seen };
        if last < self.from_ns || t.first_ts >= self.to_ns || self.to_ns <= self.from_ns {
            return;
        }
        let col = |ts: u64| {
            ((ts.clamp(self.from_ns, self.to_ns.saturating_sub(1)) - self.from_ns) / self.width_ns) as usize
        };
        for a in &mut alive[col(t.first_ts)..=col(last).min(self.count - 1)] {
            *a += 1;
        }
    }
}

/// How many tasks each "top by cost" list names.
const TOP_TASKS: usize = 5;

/// Reads one cost of a task.
type CostOf = fn(&TaskCosts) -> u64;

/// The costs the section ranks tasks by, with how to read each from a task.
const COSTS: [(&str, CostOf); 5] = [
    ("cfs_stolen", |c| c.cfs_stolen_ns),
    ("queue_wait", |c| c.queue_ns),
    ("netpoll_park", |c| c.netpoll_ns),
    ("other_park", TaskCosts::other_park_ns),
    ("on_cpu", |c| c.on_cpu_ns),
];

impl TaskSection {
    /// `None` when the trace has no user-level tasks (after the filters).
    pub fn build(tasks: &[&TaskStats], columns: Option<Columns>) -> Option<TaskSection> {
        if tasks.is_empty() {
            return None;
        }
        let mut totals = TaskCosts::default();
        for t in tasks {
            totals.add(t);
        }
        let mut reports: Vec<TaskReport> = tasks.iter().map(|t| task_report(t)).collect();
        reports.sort_by(|a, b| {
            b.costs.running_ns.cmp(&a.costs.running_ns).then((a.pid, a.task).cmp(&(b.pid, b.task)))
        });
        let by_cost = COSTS
            .iter()
            .map(|(name, of)| {
                let mut ranked: Vec<(u32, u64, u64)> =
                    reports.iter().map(|r| (r.pid, r.task, of(&r.costs))).filter(|r| r.2 > 0).collect();
                let per_task = Durations::of(ranked.iter().map(|r| r.2).collect());
                ranked.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
                ranked.truncate(TOP_TASKS);
                TopTasks { cost: name, total_ns: of(&totals), per_task, top: ranked }
            })
            .collect();
        let mut groups: std::collections::BTreeMap<(u32, &str), StartFunctionGroup> = Default::default();
        for t in tasks {
            let Some(name) = t.name.as_deref() else { continue };
            let g = groups.entry((t.pid, name)).or_insert_with(|| StartFunctionGroup {
                pid: t.pid,
                start_function: name.to_string(),
                tasks: 0,
                exited: 0,
                costs: TaskCosts::default(),
                alive: columns.as_ref().map_or(Vec::new(), |c| vec![0; c.count]),
            });
            g.tasks += 1;
            g.exited += t.exited as u64;
            g.costs.add(t);
            if let Some(c) = &columns {
                c.add(&mut g.alive, t);
            }
        }
        let mut by_start_function: Vec<StartFunctionGroup> = groups.into_values().collect();
        by_start_function.sort_by(|a, b| {
            b.costs.running_ns.cmp(&a.costs.running_ns).then(a.start_function.cmp(&b.start_function))
        });
        let mut waits: std::collections::BTreeMap<&str, u64> = Default::default();
        for t in tasks {
            for (name, ns) in &t.parked_by_wait_name {
                let w = waits.entry(name).or_default();
                *w = w.saturating_add(*ns);
            }
        }
        let mut by_wait_reason: Vec<(String, u64)> =
            waits.into_iter().map(|(n, ns)| (n.to_string(), ns)).collect();
        by_wait_reason.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut processes: Vec<u32> = tasks.iter().map(|t| t.pid).collect();
        processes.sort_unstable();
        processes.dedup();
        Some(TaskSection {
            tasks_total: tasks.len() as u64,
            processes,
            queue_wait: Durations::of(
                tasks.iter().flat_map(|t| t.queue_latencies_ns.iter().copied()).collect(),
            ),
            stolen: tasks.iter().map(|t| t.stolen).sum(),
            totals,
            by_cost,
            tasks: reports,
            columns: columns.filter(|_| !by_start_function.is_empty()),
            by_start_function,
            by_wait_reason,
        })
    }
}

fn task_report(t: &TaskStats) -> TaskReport {
    let mut threads: Vec<u32> = t.run_intervals.iter().map(|r| r.tid).collect();
    threads.sort_unstable();
    threads.dedup();
    let mut wakers: Vec<TaskWaker> =
        t.wakers.iter().map(|(w, n)| TaskWaker { waker: *w, count: *n }).collect();
    wakers
        .sort_by(|a, b| b.count.cmp(&a.count).then(format!("{:?}", a.waker).cmp(&format!("{:?}", b.waker))));
    TaskReport {
        pid: t.pid,
        task: t.task,
        start_function: t.name.clone(),
        parked_by_wait_reason: t.parked_by_wait_name.clone(),
        parent: t.parent,
        exited: t.exited,
        runs: t.runs,
        yields: t.yields,
        costs: TaskCosts::of(t),
        queue_wait: Durations::of(t.queue_latencies_ns.clone()),
        local_queue_waits: t.local_queue_waits,
        global_queue_waits: t.global_queue_waits,
        stolen: t.stolen,
        threads,
        thread_changes: t.thread_changes,
        wakers,
    }
}

/// What CFS did on one CPU to the traced threads.
#[derive(Debug, Serialize)]
pub struct CpuReport {
    pub cpu: u16,
    /// Time traced threads ran on it.
    pub busy_ns: u64,
    pub switches: u64,
    /// Traced threads preempted here, and by whom (most frequent first).
    pub preemptions: u64,
    pub preempted_by: Vec<Peer>,
    /// Run-queue latencies of the traced threads that got this CPU.
    pub runqueue_latency: Durations,
    pub migrations_in: u64,
    pub migrations_out: u64,
    /// At each switch, the spread of `se.vruntime` between the traced threads runnable here and
    /// the one CFS picked: how far apart CFS let their virtual runtimes drift.
    pub vruntime_spread: Durations,
}

pub fn cpu_reports(cpus: &[CpuStats], names: &TaskNames) -> Vec<CpuReport> {
    cpus.iter()
        .filter(|c| c.switches > 0 || c.migrations_in > 0 || c.migrations_out > 0)
        .map(|c| CpuReport {
            cpu: c.cpu,
            busy_ns: c.busy_ns,
            switches: c.switches,
            preemptions: c.preemptions,
            preempted_by: top_peers(&c.preempted_by, names),
            runqueue_latency: Durations::of(c.latencies_ns.clone()),
            migrations_in: c.migrations_in,
            migrations_out: c.migrations_out,
            vruntime_spread: Durations::of(c.vruntime_spreads.clone()),
        })
        .collect()
}
