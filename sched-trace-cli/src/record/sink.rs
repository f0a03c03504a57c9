//! The recorder's writing side, on its own thread: puts records in timestamp order, names the
//! threads they mention (task table), and writes chunks.
//!
//! Records from different CPUs can leave the ring buffer slightly out of timestamp order, so the
//! sink holds back the newest [`HOLDBACK_NS`] of records and writes each chunk sorted. The file is
//! then in order and readers stream it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustc_hash::FxHashSet;
use tokio::sync::mpsc::Receiver;

use super::procfs;
use crate::trace::{
    Comm, DropCounters, EventKind, TaskEntry, TaskSource, TraceError, TraceWriter, UserProbe,
    event::{Decoded, decode, peek_ids, peek_kind_size, peek_ts},
    format::{KernelSymbols, MappingsChunk},
};

/// Records younger than this (relative to the newest seen) wait for the next chunk.
pub const HOLDBACK_NS: u64 = 10_000_000;
/// A chunk is written once this many bytes of records are ready...
const CHUNK_BYTES: usize = 1 << 20;
/// ...or this long after the previous one.
const CHUNK_INTERVAL: Duration = Duration::from_millis(250);

pub enum SinkMsg {
    /// Whole, validated records.
    Records(Vec<u8>),
    /// Task-table entries from a /proc scan.
    Tasks(Vec<TaskEntry>),
    /// A snapshot of the drop counters.
    Drops(DropCounters),
    /// User-level probes attached during the recording, and those found but skipped.
    Probes { added: Vec<UserProbe>, skipped: Vec<String> },
    /// The stack table (after the probes are detached).
    Stacks(Vec<(u32, Vec<u64>)>),
    /// Snapshots of processes' executable mappings.
    Mappings(Vec<MappingsChunk>),
    /// The kernel functions of the kernel stacks.
    KernelSymbols(KernelSymbols),
    /// Traced Go programs and the start functions of their goroutines.
    Go(crate::trace::format::GoChunk),
    /// What the recorder learned about the traced tasks' cgroups.
    Cgroups(crate::trace::format::CgroupsChunk),
}

/// Progress, shared with the status line.
#[derive(Default)]
pub struct SinkStats {
    pub events: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct SinkOutput {
    pub writer: TraceWriter,
    /// Events written to the file...
    pub events: u64,
    /// ...the last of them at this time.
    pub last_written_ns: u64,
    /// Why writing stopped early (the sink hung up on the recorder then).
    pub failure: Option<TraceError>,
}

struct Sink {
    writer: TraceWriter,
    /// Records waiting to be written, back to back...
    pending: Vec<u8>,
    /// ...and their (timestamp, offset, size).
    index: Vec<(u64, u32, u8)>,
    newest: u64,
    tasks: Vec<TaskEntry>,
    known_tids: FxHashSet<u32>,
    last_chunk: Instant,
    last_drops: Option<DropCounters>,
    events: u64,
    last_written_ns: u64,
    stats: Arc<SinkStats>,
}

/// Runs the sink until the channel closes, then writes everything still held. The caller
/// finishes the file. A write that fails ends the sink at once (the recorder sees the channel
/// close) and is reported in the output.
pub fn run(writer: TraceWriter, mut rx: Receiver<SinkMsg>, stats: Arc<SinkStats>) -> SinkOutput {
    let mut sink = Sink {
        writer,
        pending: Vec::with_capacity(2 * CHUNK_BYTES),
        index: Vec::new(),
        newest: 0,
        tasks: Vec::new(),
        known_tids: FxHashSet::default(),
        last_chunk: Instant::now(),
        last_drops: None,
        events: 0,
        last_written_ns: 0,
        stats,
    };
    sink.known_tids.insert(0); // the idle task, named by CPU, never looked up
    let failure = sink.serve(&mut rx).err();
    SinkOutput { events: sink.events, last_written_ns: sink.last_written_ns, writer: sink.writer, failure }
}

impl Sink {
    fn serve(&mut self, rx: &mut Receiver<SinkMsg>) -> Result<(), TraceError> {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                SinkMsg::Records(buf) => {
                    self.take_records(&buf);
                    if self.pending.len() >= CHUNK_BYTES || self.last_chunk.elapsed() >= CHUNK_INTERVAL {
                        self.flush(false)?;
                    }
                }
                SinkMsg::Tasks(t) => {
                    self.known_tids.extend(t.iter().map(|e| e.tid));
                    self.tasks.extend(t);
                }
                SinkMsg::Probes { added, skipped } => self.writer.write_probes(&added, &skipped)?,
                SinkMsg::Stacks(stacks) => self.writer.write_stacks(&stacks)?,
                SinkMsg::Mappings(snapshots) => {
                    for m in &snapshots {
                        self.writer.write_mappings(m)?;
                    }
                }
                SinkMsg::KernelSymbols(k) => self.writer.write_kernel_symbols(&k)?,
                SinkMsg::Go(g) => self.writer.write_go(&g)?,
                SinkMsg::Cgroups(c) => self.writer.write_cgroups(&c)?,
                SinkMsg::Drops(d) => {
                    if self.last_drops.as_ref() != Some(&d) {
                        self.writer.write_drops(&d)?;
                        self.last_drops = Some(d);
                    }
                }
            }
        }
        self.flush(true)
    }

    fn take_records(&mut self, buf: &[u8]) {
        let mut rest = buf;
        while let Some((kind, size)) = peek_kind_size(rest) {
            // User-task records, the bulk at a Go program's full level, name no thread but
            // their own: the header says which, without decoding the rest.
            if kind == sched_trace_abi::kind::USER_TASK
                && size > 0
                && size <= rest.len()
                && let Some((tid, pid)) = peek_ids(rest)
            {
                let ts = self.take(rest, size);
                self.name_thread(ts, tid, pid);
                rest = &rest[size..];
                continue;
            }
            let Ok(decoded) = decode(rest) else { break };
            let size = match decoded {
                Decoded::Event(e, size) => {
                    self.name_threads(&e);
                    size
                }
                Decoded::Unknown { size, .. } => size,
            };
            self.take(rest, size);
            rest = &rest[size..];
        }
    }

    /// Queues the record of `size` bytes at the start of `rest` for writing; returns its time.
    fn take(&mut self, rest: &[u8], size: usize) -> u64 {
        let ts = peek_ts(rest).unwrap_or(0);
        self.newest = self.newest.max(ts);
        self.index.push((ts, self.pending.len() as u32, size as u8));
        self.pending.extend_from_slice(&rest[..size]);
        ts
    }

    /// Names thread `tid` of `pid` (from /proc) the first time a record (at `ts`) shows it.
    fn name_thread(&mut self, ts: u64, tid: u32, pid: u32) {
        if self.known_tids.insert(tid) {
            let (pid, comm, source) = match procfs::lookup(tid) {
                Some((pid, comm)) => (pid, comm, TaskSource::Lookup),
                None => (pid, Comm::default(), TaskSource::Unknown),
            };
            self.tasks.push(TaskEntry { ts, tid, pid, comm, source });
        }
    }

    /// Adds task-table entries for what `e` says about thread names.
    fn name_threads(&mut self, e: &crate::trace::Event) {
        let entry = |tid, pid, comm, source| TaskEntry { ts: e.ts, tid, pid, comm, source };
        match e.kind {
            EventKind::Fork { child_tid, child_pid, comm, .. } => {
                self.known_tids.insert(child_tid);
                self.tasks.push(entry(child_tid, child_pid, comm, TaskSource::Fork));
            }
            EventKind::Exec { comm, .. } => {
                self.known_tids.insert(e.tid);
                self.tasks.push(entry(e.tid, e.pid, comm, TaskSource::Exec));
            }
            EventKind::Rename { comm } => {
                self.known_tids.insert(e.tid);
                self.tasks.push(entry(e.tid, e.pid, comm, TaskSource::Rename));
            }
            _ => {}
        }
        for (tid, pid) in std::iter::once((e.tid, e.pid)).chain(e.other_tids()) {
            self.name_thread(e.ts, tid, pid);
        }
    }

    /// Writes the records that can no longer be overtaken (all of them if `all`).
    fn flush(&mut self, all: bool) -> Result<(), TraceError> {
        if !self.index.is_sorted_by_key(|r| r.0) {
            self.index.sort_by_key(|r| r.0); // stable: ties keep ring-buffer order
        }
        let cut = if all {
            self.index.len()
        } else {
            let horizon = self.newest.saturating_sub(HOLDBACK_NS);
            self.index.partition_point(|r| r.0 <= horizon)
        };
        if !self.tasks.is_empty() {
            self.writer.write_tasks(&self.tasks)?;
            self.tasks.clear();
        }
        if cut > 0 {
            let mut chunk = Vec::with_capacity(self.pending.len());
            for &(_, off, size) in &self.index[..cut] {
                chunk.extend_from_slice(&self.pending[off as usize..off as usize + size as usize]);
            }
            self.writer.write_events(&chunk)?;
            self.events += cut as u64;
            self.last_written_ns = self.last_written_ns.max(self.index[cut - 1].0);
            let mut kept = Vec::with_capacity(self.pending.capacity());
            let mut kept_index = Vec::with_capacity(self.index.len() - cut);
            for &(ts, off, size) in &self.index[cut..] {
                kept_index.push((ts, kept.len() as u32, size));
                kept.extend_from_slice(&self.pending[off as usize..off as usize + size as usize]);
            }
            self.pending = kept;
            self.index = kept_index;
        }
        self.last_chunk = Instant::now();
        self.stats.events.store(self.events, Ordering::Relaxed);
        self.stats.bytes.store(self.writer.len(), Ordering::Relaxed);
        Ok(())
    }
}
