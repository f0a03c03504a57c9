//! Correlation: rebuilds, from a trace file alone, what happened to every thread (and, with the
//! runtime probes, every user task) and folds it into statistics.

pub mod threads;

use crate::trace::{TraceError, TraceInfo, TraceReader, TraceTables, TraceTarget};
pub use threads::{IRQ_WAKER, OffCpu, Scope, ThreadStats, ThreadTracker};

/// Everything the analyses know about one trace.
#[derive(Debug)]
pub struct Correlation {
    pub info: TraceInfo,
    pub tables: TraceTables,
    pub threads: Vec<ThreadStats>,
    /// Hits per user-level probe (index into `info.user_probes`).
    pub user_probe_hits: std::collections::BTreeMap<u32, u64>,
    /// First and last event timestamps.
    pub first_ts: u64,
    pub last_ts: u64,
}

/// The threads a trace is about.
pub fn scope_of(info: &TraceInfo) -> Scope {
    match &info.target {
        TraceTarget::SystemWide => Scope::AllBut(info.recorder_pid),
        TraceTarget::Pids { pids } => Scope::Pids(pids.clone()),
        TraceTarget::Command { pid, .. } => Scope::Pids(vec![*pid]),
    }
}

/// Reads the whole trace and correlates it.
pub fn correlate<R: std::io::Read>(mut reader: TraceReader<R>) -> Result<Correlation, TraceError> {
    let mut tracker = ThreadTracker::new(scope_of(reader.info()));
    let mut first_ts = None;
    let mut user_probe_hits = std::collections::BTreeMap::new();
    while let Some(e) = reader.next_event()? {
        first_ts.get_or_insert(e.ts);
        if let crate::trace::EventKind::UserTask { probe, .. } = e.kind {
            *user_probe_hits.entry(probe).or_default() += 1;
        }
        tracker.event(&e);
    }
    let info = reader.info().clone();
    let tables = reader.into_tables()?;
    let last_ts = tables.last_ts;
    Ok(Correlation {
        threads: tracker.finish(last_ts),
        user_probe_hits,
        first_ts: first_ts.unwrap_or(info.start_ns),
        last_ts,
        info,
        tables,
    })
}
