//! The trace file: its format, the decoding of kernel records, and its writer and reader.
//!
//! Everything after `record` is a pure function of a trace file, read through this module.

pub mod cgroups;
pub mod columnar;
mod decode;
pub mod event;
pub mod format;
pub mod reader;
pub mod synthetic;
pub mod validate;
pub mod writer;

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use sched_trace_abi::{drop_slot, kind};

pub use event::{Comm, Event, EventKind};
pub use format::{EndInfo, TaskEntry, TaskSource, TraceInfo, TraceTarget, UserProbe, WriteFailure};
pub use reader::{Prescan, RawChunk, TraceReader, TraceTables, Truncation, prescan, prescan_of};
pub use writer::TraceWriter;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Its message includes the OS error's (which is therefore not also its `source`).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path} is not a sched-trace file (no SCHDTRCE magic at offset 0)")]
    NotATrace { path: PathBuf },
    #[error(
        "{path}: format version {found} is not supported by this sched-trace (it reads version {supported})"
    )]
    UnsupportedVersion { path: PathBuf, found: u16, supported: u16 },
    #[error("{path} is corrupt at byte offset {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("cannot encode trace data: {0}")]
    Encode(String),
}

impl TraceError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        TraceError::Io { path: path.to_path_buf(), error: source }
    }

    /// The I/O error behind this one, if any (to tell a full disk from a bad file).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TraceError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Records that did not make it into the trace, as counted by the kernel programs (per CPU and
/// per slot: slot = record kind, slot 0 = filter table full) and by the recorder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub per_cpu: Vec<Vec<u64>>,
    /// Records the recorder received but could not keep (malformed).
    pub malformed: u64,
    /// Records the kernel submitted that the recorder never received (counted at the end of a
    /// recording, by comparing the kernel's submit counters with what was drained).
    pub unreceived: u64,
}

impl DropCounters {
    /// Number of per-CPU slots this version writes.
    pub const SLOTS: usize = drop_slot::COUNT as usize;

    /// Sum over CPUs, per slot.
    pub fn by_slot(&self) -> Vec<u64> {
        let slots = self.per_cpu.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = vec![0u64; slots];
        for cpu in &self.per_cpu {
            for (o, c) in out.iter_mut().zip(cpu) {
                *o = o.saturating_add(*c);
            }
        }
        out
    }

    /// Records lost because the ring buffer was full, plus those the recorder could not keep.
    pub fn lost_records(&self) -> u64 {
        let by_slot = self.by_slot();
        by_slot.iter().skip(1).chain([&self.malformed, &self.unreceived]).fold(0, |a, n| a.saturating_add(*n))
    }

    /// Child processes that could not be followed because the kernel filter table was full.
    pub fn filter_table_full(&self) -> u64 {
        self.by_slot().first().copied().unwrap_or(0)
    }

    /// Lost records by kind name, non-zero only.
    pub fn lost_by_kind(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = self
            .by_slot()
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (kind_name(k as u8), *n))
            .collect();
        if self.malformed > 0 {
            out.push(("malformed", self.malformed));
        }
        if self.unreceived > 0 {
            out.push(("submitted but not received", self.unreceived));
        }
        out
    }

    pub fn is_zero(&self) -> bool {
        self.lost_records() == 0 && self.filter_table_full() == 0
    }
}

/// Human name of a record kind.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::SWITCH => "sched_switch",
        kind::WAKING => "sched_waking",
        kind::WAKEUP => "sched_wakeup",
        kind::WAKEUP_NEW => "sched_wakeup_new",
        kind::MIGRATE => "sched_migrate_task",
        kind::FORK => "sched_process_fork",
        kind::EXEC => "sched_process_exec",
        kind::EXIT => "sched_process_exit",
        kind::RENAME => "task_rename",
        kind::EPOLL_ENTER => "epoll_enter",
        kind::EPOLL_EXIT => "epoll_exit",
        kind::USER_TASK => "user_task",
        kind::CPU_SAMPLE => "cpu_sample",
        kind::MMAP_EXEC => "mmap_exec",
        kind::CGROUP => "cgroup_attach_task",
        _ => "unknown",
    }
}

/// Names of threads over time, from the task table.
#[derive(Clone, Debug, Default)]
pub struct TaskNames {
    by_tid: HashMap<u32, Vec<TaskEntry>>,
}

impl TaskNames {
    pub fn new(entries: &[TaskEntry]) -> Self {
        let mut by_tid: HashMap<u32, Vec<TaskEntry>> = HashMap::new();
        for e in entries {
            by_tid.entry(e.tid).or_default().push(*e);
        }
        for v in by_tid.values_mut() {
            v.sort_by_key(|e| e.ts);
        }
        TaskNames { by_tid }
    }

    /// The last name `tid` had (a non-empty one if it ever had one) and its process.
    pub fn last(&self, tid: u32) -> Option<(Comm, u32)> {
        let v = self.by_tid.get(&tid)?;
        let e = v.iter().rev().find(|e| !e.comm.is_empty()).or(v.last())?;
        Some((e.comm, e.pid))
    }

    /// The name `tid` had at `ts`.
    pub fn at(&self, tid: u32, ts: u64) -> Option<Comm> {
        let v = self.by_tid.get(&tid)?;
        let i = v.partition_point(|e| e.ts <= ts);
        v[..i].iter().rev().chain(v[i..].iter()).find(|e| !e.comm.is_empty()).map(|e| e.comm)
    }

    /// Display name for a thread: its comm, or `[idle]` for the idle task, or `?`.
    pub fn display(&self, tid: u32) -> String {
        if tid == 0 {
            return "[idle]".into();
        }
        if tid == u32::MAX {
            return "[irq]".into(); // correlate::IRQ_WAKER
        }
        match self.last(tid) {
            Some((c, _)) if !c.is_empty() => c.to_string(),
            _ => "?".into(),
        }
    }
}
