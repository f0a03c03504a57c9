//! Samples: one per completed wait (or run) of a thread or a task, with when it ended and how
//! long it lasted. The correlation emits them as it folds the events, so that an analysis that
//! needs every sample in time (the heat map, the flame graph's selections) aggregates them in one
//! pass without the correlation keeping them.

use serde::Serialize;

/// What a sample measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Run-queue latency: a thread woken or preempted until it runs (CFS's wait).
    Runq,
    /// A thread off CPU: switch-out to switch-in, whatever it waited for.
    Offcpu,
    /// An interruptible sleep (outside epoll): switch-out to wake-up.
    Sleep,
    /// Blocked in an epoll wait: switch-out to wake-up.
    Epoll,
    /// Blocked otherwise (uninterruptible): switch-out to wake-up.
    Blocked,
    /// Throttled: switch-out when its cgroup's CPU quota ran out, to switch-in.
    Throttled,
    /// A user task waiting in a runtime queue: ready (or spawned) to run.
    TaskQueue,
    /// A user task parked in the netpoller: park to ready.
    Netpoll,
    /// One run of a user task: the time its thread was off CPU (waiting for CFS) while the
    /// runtime had the task running. Runs with none are not samples.
    CfsStolen,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::Runq,
        Metric::Offcpu,
        Metric::Sleep,
        Metric::Epoll,
        Metric::Blocked,
        Metric::Throttled,
        Metric::TaskQueue,
        Metric::Netpoll,
        Metric::CfsStolen,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Runq => "runq",
            Metric::Offcpu => "offcpu",
            Metric::Sleep => "sleep",
            Metric::Epoll => "epoll",
            Metric::Blocked => "blocked",
            Metric::Throttled => "throttled",
            Metric::TaskQueue => "task-queue",
            Metric::Netpoll => "netpoll",
            Metric::CfsStolen => "cfs-stolen",
        }
    }

    /// What it measures, for titles and legends.
    pub fn describe(self) -> &'static str {
        match self {
            Metric::Runq => "run-queue latency (woken or preempted → running)",
            Metric::Offcpu => "off-CPU time (switch-out → switch-in)",
            Metric::Sleep => "sleeps (switch-out → wake-up)",
            Metric::Epoll => "epoll waits (switch-out → wake-up)",
            Metric::Blocked => "uninterruptible blocks (switch-out → wake-up)",
            Metric::Throttled => "throttled waits (quota ran out at switch-out → switch-in)",
            Metric::TaskQueue => "runtime queue wait (ready → running)",
            Metric::Netpoll => "netpoller parks (park → ready)",
            Metric::CfsStolen => "CFS-stolen time per task run",
        }
    }

    /// Whether it is about user tasks (needs the runtime's probes in the trace).
    pub fn of_tasks(self) -> bool {
        matches!(self, Metric::TaskQueue | Metric::Netpoll | Metric::CfsStolen)
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// No CPU is known for the sample (a task's wait).
pub const NO_CPU: u16 = u16::MAX;

/// One completed wait or run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub metric: Metric,
    /// When it ended (ns, the trace's clock).
    pub end: u64,
    pub ns: u64,
    /// The thread: the one that waited, or the one the task ran (or parked) on.
    pub tid: u32,
    pub pid: u32,
    /// The CPU it ended on ([`NO_CPU`] when not known).
    pub cpu: u16,
    /// The user task: the one waiting for task metrics; for a thread's wait, the task the
    /// runtime had running on the thread when it ended, if any.
    pub task: Option<u64>,
    /// The thread's user and kernel stacks as it switched out to begin this wait (`NO_STACK`
    /// when not recorded): where it waited.
    pub stacks: (i32, i32),
    /// Who ended the wait, when a wake-up did: the waker thread, its process and its stacks.
    pub waker: Option<SampleWaker>,
}

/// The waker of a wait (see [`Sample::waker`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleWaker {
    pub tid: u32,
    pub pid: u32,
    pub stacks: (i32, i32),
}

/// A stack pair that was not recorded.
pub const NO_STACKS: (i32, i32) = (sched_trace_abi::NO_STACK, sched_trace_abi::NO_STACK);

/// How many samples of each metric a thread or task has (within the window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleCounts([u64; Metric::COUNT]);

impl SampleCounts {
    pub fn add(&mut self, m: Metric) {
        self.0[m.index()] += 1;
    }

    pub fn get(&self, m: Metric) -> u64 {
        self.0[m.index()]
    }
}

impl Serialize for SampleCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for metric in Metric::ALL {
            if self.get(metric) > 0 {
                m.serialize_entry(metric.name(), &self.get(metric))?;
            }
        }
        m.end()
    }
}

/// The stretch of time an analysis looks at: intervals are clipped to it, and events and
/// samples outside it are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: u64,
    pub to: u64,
}

impl Window {
    pub const ALL: Window = Window { from: 0, to: u64::MAX };

    /// How much of `[start, end)` lies inside.
    pub fn clip(&self, start: u64, end: u64) -> u64 {
        end.min(self.to).saturating_sub(start.max(self.from))
    }

    /// Whether `ts` is inside: `[from, to)`, so that adjacent windows share no moment.
    pub fn contains(&self, ts: u64) -> bool {
        ts >= self.from && (ts < self.to || self.to == u64::MAX)
    }

    pub fn is_all(&self) -> bool {
        *self == Window::ALL
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_clip_intervals() {
        let w = Window { from: 100, to: 200 };
        assert_eq!(
            (w.clip(0, 50), w.clip(50, 150), w.clip(120, 180), w.clip(150, 300), w.clip(0, 1000)),
            (0, 50, 60, 50, 100)
        );
        assert_eq!(Window::ALL.clip(5, 9), 4);
        assert!(w.contains(100) && w.contains(199) && !w.contains(200) && Window::ALL.contains(u64::MAX));
    }

    #[test]
    fn metrics_have_one_name_each() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("nope"), None);
    }
}
