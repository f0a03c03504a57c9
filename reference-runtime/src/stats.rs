//! The counters a runtime session keeps, returned at shutdown.

use std::fmt;

/// Counters of one P.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PStats {
    pub id: usize,
    /// Task polls on this P.
    pub tasks_run: u64,
    /// Successful steals by Ms holding this P (as thief).
    pub steal_ops: u64,
    /// Tasks those steals took.
    pub steals: u64,
    /// Tasks stolen from this P's queue (as victim).
    pub stolen: u64,
    /// Longest the local run queue has been.
    pub max_local_len: u64,
}

/// Counters of one M.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MStats {
    pub id: u64,
    /// Its kernel thread id.
    pub tid: u64,
    /// Times it slept for lack of work (on its condvar or in `epoll_wait`).
    pub parks: u64,
    pub tasks_run: u64,
}

/// Counters of a session (one `block_on`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub procs: Vec<PStats>,
    pub ms: Vec<MStats>,
    pub spawned: u64,
    /// Tasks the netpoller readied.
    pub netpoll_readies: u64,
    /// Timers that fired.
    pub timer_fires: u64,
    /// Ps handed off by blocking sections.
    pub handoffs: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "runtime: {} Ps, {} Ms; spawned {}, netpoll readies {}, timer fires {}, handoffs {}",
            self.procs.len(),
            self.ms.len(),
            self.spawned,
            self.netpoll_readies,
            self.timer_fires,
            self.handoffs
        )?;
        writeln!(
            f,
            "{:>4} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "P", "tasks_run", "steal_ops", "steals", "stolen", "max_runq"
        )?;
        for p in &self.procs {
            writeln!(
                f,
                "{:>4} {:>12} {:>10} {:>10} {:>10} {:>10}",
                p.id, p.tasks_run, p.steal_ops, p.steals, p.stolen, p.max_local_len
            )?;
        }
        writeln!(f, "{:>4} {:>8} {:>12} {:>10}", "M", "tid", "tasks_run", "parks")?;
        for m in &self.ms {
            writeln!(f, "{:>4} {:>8} {:>12} {:>10}", m.id, m.tid, m.tasks_run, m.parks)?;
        }
        Ok(())
    }
}
