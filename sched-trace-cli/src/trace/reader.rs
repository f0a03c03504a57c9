//! Reading trace files, defensively: every length is checked against the format's limits and the
//! file's real size before anything is allocated, every chunk against its checksum, and every
//! error names the byte offset where the file went wrong.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::{Path, PathBuf},
};

use bytes::Buf;

use super::{
    Comm, DropCounters, EventKind, TraceError,
    event::{Decoded, Event, decode},
    format::{
        CHUNK_COLUMNAR, CHUNK_COMPRESSED, CHUNK_HEADER_LEN, CHUNK_MAGIC, ChunkKind, EndInfo, FILE_HEADER_LEN,
        FORMAT_VERSION, MAGIC, MAX_CHUNK_LEN, MAX_INFO_LEN, ProbesChunk, TASK_ENTRY_LEN, TaskEntry,
        TaskSource, TraceInfo,
    },
};

/// Most CPUs a drop-counter snapshot may hold (a record's CPU is 16 bits)...
const MAX_DROP_CPUS: usize = 1 << 16;
/// ...and most counters per CPU (one per record kind at most).
const MAX_DROP_SLOTS: usize = 256;
/// lz4 cannot expand a block by more than this factor (a match of 255 + a few bytes costs one
/// byte at best): a chunk claiming more is refused before its buffer is allocated.
const LZ4_MAX_RATIO: u64 = 255;

/// Events may reach the file slightly out of timestamp order (records from different CPUs);
/// the reader re-sorts within this window before handing them out.
const REORDER_WINDOW_NS: u64 = 50_000_000;

/// How a recording that was not closed cleanly ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Offset of the first byte that is not part of a whole chunk.
    pub offset: u64,
    /// Bytes after `offset` that were discarded.
    pub discarded_bytes: u64,
}

/// Everything the file says besides its events, gathered while reading.
#[derive(Clone, Debug, Default)]
pub struct TraceTables {
    pub tasks: Vec<TaskEntry>,
    /// The last drop-counter snapshot, if any was written.
    pub drops: Option<DropCounters>,
    /// Present when the recording was closed cleanly.
    pub end: Option<EndInfo>,
    /// Present when the file ends in a partial chunk.
    pub truncation: Option<Truncation>,
    /// Chunks of kinds this reader does not know (written by a newer version), skipped.
    pub unknown_chunks: u64,
    /// Records of kinds this reader does not know, skipped.
    pub unknown_records: u64,
    /// User-level probe records whose thread was rescheduled between hitting the probe and the
    /// probe program running, moved back to the moment the thread was switched out.
    pub backdated_probes: u64,
    /// Events handed out.
    pub events: u64,
    /// Events that did not fit the recording (impossible CPUs or ids: dropped; back in time:
    /// handed out later), see [`super::validate`].
    pub rejected: super::validate::Rejected,
    /// Timestamp of the last event.
    pub last_ts: u64,
}

/// One whole chunk as the file has it, its payload decoded (decompressed, records rebuilt from
/// columns): for tools that look at or rewrite a trace's structure, see
/// [`TraceReader::next_raw_chunk`].
#[derive(Clone, Debug)]
pub struct RawChunk {
    pub kind: u8,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// A trace file opened for reading.
pub struct TraceReader<R = BufReader<File>> {
    src: R,
    path: PathBuf,
    offset: u64,
    file_len: u64,
    info: TraceInfo,
    tables: TraceTables,
    /// Events sorted and ready to hand out, from `ready_pos` on.
    ready: Vec<Event>,
    ready_pos: usize,
    /// Events held back because a later chunk may still hold earlier ones.
    carry: Vec<Event>,
    eof: bool,
    last_emitted: u64,
    /// Per thread, its last switch-out while runnable: (time, user instruction pointer).
    switched_out_at: rustc_hash::FxHashMap<u32, (u64, u64)>,
    /// Chunk buffers to reuse (a fresh megabyte per chunk costs page faults).
    spare: Vec<Vec<u8>>,
    /// Where each user-level probe is in `info.user_probes`, by its index.
    probe_slots: rustc_hash::FxHashMap<u32, usize>,
    limits: super::validate::EventLimits,
}

impl TraceReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|e| TraceError::io(path, e))?;
        let len = file.metadata().map_err(|e| TraceError::io(path, e))?.len();
        TraceReader::new(BufReader::with_capacity(1 << 20, file), path, len)
    }
}

impl<R: Read> TraceReader<R> {
    /// Reads the header from `src`, a source of `file_len` bytes named `path` in errors.
    pub fn new(mut src: R, path: &Path, file_len: u64) -> Result<Self, TraceError> {
        let corrupt =
            |offset: u64, what: String| TraceError::Corrupt { path: path.to_path_buf(), offset, what };
        let mut head = [0u8; FILE_HEADER_LEN];
        let got = read_full(&mut src, &mut head).map_err(|e| TraceError::io(path, e))?;
        if got < MAGIC.len() || head[..MAGIC.len()] != MAGIC {
            return Err(TraceError::NotATrace { path: path.to_path_buf() });
        }
        if got < FILE_HEADER_LEN {
            return Err(corrupt(got as u64, "the file ends inside its header".into()));
        }
        let mut h = &head[MAGIC.len()..];
        let version = h.get_u16_le();
        let flags = h.get_u16_le();
        let info_len = h.get_u32_le();
        let info_crc = h.get_u32_le();
        if version != FORMAT_VERSION {
            return Err(TraceError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if flags != 0 {
            return Err(corrupt(10, format!("unknown header flags {flags:#06x}")));
        }
        if info_len > MAX_INFO_LEN || FILE_HEADER_LEN as u64 + info_len as u64 > file_len {
            return Err(corrupt(
                16,
                format!("header claims {info_len} bytes of recording facts; the file has {file_len} bytes"),
            ));
        }
        let mut body = vec![0u8; info_len as usize];
        let got = read_full(&mut src, &mut body).map_err(|e| TraceError::io(path, e))?;
        if got < body.len() {
            return Err(corrupt(
                FILE_HEADER_LEN as u64 + got as u64,
                "the file ends inside its header".into(),
            ));
        }
        if crc32fast::hash(&body) != info_crc {
            return Err(corrupt(FILE_HEADER_LEN as u64, "header checksum mismatch".into()));
        }
        let info: TraceInfo = serde_json::from_slice(&body)
            .map_err(|e| corrupt(FILE_HEADER_LEN as u64, format!("recording facts do not parse: {e}")))?;
        if info.abi_version != sched_trace_abi::ABI_VERSION {
            return Err(TraceError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: info.abi_version,
                supported: sched_trace_abi::ABI_VERSION,
            });
        }
        let probe_slots = info.user_probes.iter().enumerate().map(|(slot, p)| (p.index, slot)).collect();
        let limits = super::validate::EventLimits::new(info.possible_cpus);
        Ok(TraceReader {
            probe_slots,
            limits,
            src,
            path: path.to_path_buf(),
            offset: (FILE_HEADER_LEN + body.len()) as u64,
            file_len,
            info,
            tables: TraceTables::default(),
            ready: Vec::new(),
            ready_pos: 0,
            carry: Vec::new(),
            eof: false,
            last_emitted: 0,
            switched_out_at: Default::default(),
            spare: Vec::new(),
        })
    }

    /// The recording's facts; its probe table grows with the `PROBES` chunks read so far.
    pub fn info(&self) -> &TraceInfo {
        &self.info
    }

    /// User-level probe `index`, if the table read so far has it.
    pub fn user_probe(&self, index: u32) -> Option<&super::UserProbe> {
        self.probe_slots.get(&index).and_then(|&slot| self.info.user_probes.get(slot))
    }

    /// How many CPUs events may name (per-CPU tables need no more entries).
    pub fn cpu_limit(&self) -> u32 {
        self.limits.cpus()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tables read so far; complete once [`Self::next_event`] returned `None`.
    pub fn tables(&self) -> &TraceTables {
        &self.tables
    }

    /// Reads to the end of the file and returns its tables.
    pub fn into_tables(mut self) -> Result<TraceTables, TraceError> {
        while self.next_event()?.is_some() {}
        Ok(self.tables)
    }

    /// The next event in timestamp order, or `None` at the end of the file.
    pub fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            if let Some(&e) = self.ready.get(self.ready_pos) {
                self.ready_pos += 1;
                let mut e = e;
                match self.limits.check(&e) {
                    Ok(()) => {}
                    Err(super::validate::Unfit::Cpu) => {
                        self.tables.rejected.bad_cpu += 1;
                        continue;
                    }
                    Err(super::validate::Unfit::Id) => {
                        self.tables.rejected.bad_id += 1;
                        continue;
                    }
                }
                if e.ts < self.last_emitted {
                    // Time never runs backwards after the reader (see `validate`).
                    self.tables.rejected.backwards_time += 1;
                    e.ts = self.last_emitted;
                } else {
                    self.last_emitted = e.ts;
                }
                self.tables.events += 1;
                self.tables.last_ts = self.tables.last_ts.max(e.ts);
                return Ok(Some(e));
            }
            self.ready.clear();
            self.ready_pos = 0;
            if self.eof {
                if self.carry.is_empty() {
                    return Ok(None);
                }
                std::mem::swap(&mut self.ready, &mut self.carry);
                continue;
            }
            match self.next_chunk()? {
                None => self.eof = true,
                Some(chunk) => self.take_chunk(chunk)?,
            }
        }
    }

    /// The next whole chunk, undigested (`None` at the end of the file; a partial chunk is noted
    /// in the tables). Use either this or [`Self::next_event`] on one reader, not both.
    pub fn next_raw_chunk(&mut self) -> Result<Option<RawChunk>, TraceError> {
        self.next_chunk()
    }

    /// An empty buffer, from the spares if there is one.
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn take_chunk(&mut self, chunk: RawChunk) -> Result<(), TraceError> {
        let result = self.use_chunk(&chunk);
        self.spare.push(chunk.payload);
        result
    }

    fn use_chunk(&mut self, chunk: &RawChunk) -> Result<(), TraceError> {
        match ChunkKind::from_u8(chunk.kind) {
            Some(ChunkKind::Events) => self.take_events(chunk)?,
            Some(ChunkKind::Tasks) => self.take_tasks(chunk)?,
            Some(ChunkKind::Drops) => self.tables.drops = Some(self.parse_drops(chunk)?),
            Some(ChunkKind::Probes) => {
                let chunk: ProbesChunk = serde_json::from_slice(&chunk.payload).map_err(|e| {
                    self.corrupt(chunk.offset, format!("the probe table does not parse: {e}"))
                })?;
                for p in chunk.added {
                    // A later entry for an index replaces an earlier one.
                    self.probe_slots.insert(p.index, self.info.user_probes.len());
                    self.info.user_probes.push(p);
                }
                self.info.skipped_user_probes.extend(chunk.skipped);
            }
            Some(ChunkKind::End) => {
                let end: EndInfo = serde_json::from_slice(&chunk.payload).map_err(|e| {
                    self.corrupt(chunk.offset, format!("end-of-recording facts do not parse: {e}"))
                })?;
                self.tables.end = Some(end);
            }
            None => self.tables.unknown_chunks += 1,
        }
        Ok(())
    }

    fn take_events(&mut self, chunk: &RawChunk) -> Result<(), TraceError> {
        let mut buf = &chunk.payload[..];
        let mut pos = 0usize;
        while !buf.is_empty() {
            match decode(buf) {
                Ok(Decoded::Event(mut e, size)) => {
                    self.backdate_delayed_probe(&mut e);
                    self.carry.push(e);
                    buf = &buf[size..];
                    pos += size;
                }
                Ok(Decoded::Unknown { size, .. }) => {
                    self.tables.unknown_records += 1;
                    buf = &buf[size..];
                    pos += size;
                }
                Err(e) => {
                    return Err(self.corrupt(
                        chunk.offset,
                        format!("event record at byte {pos} of the chunk's payload: {e}"),
                    ));
                }
            }
        }
        if !self.carry.is_sorted_by_key(|e| e.ts) {
            self.carry.sort_by_key(|e| e.ts); // stable: equal timestamps keep file order
        }
        let newest = self.carry.last().map_or(0, |e| e.ts);
        let horizon = newest.saturating_sub(REORDER_WINDOW_NS);
        let split = self.carry.partition_point(|e| e.ts <= horizon);
        self.ready.extend(self.carry.drain(..split));
        Ok(())
    }

    /// A thread can be rescheduled on its way back from a uprobe's breakpoint, before the probe's
    /// program runs: the record's timestamp is then late by the time the thread waited. Its
    /// switch-out shows it: the thread's user instruction pointer is just past the breakpoint
    /// (the probe site + 1), and the probe's record says which site it was (the kernel has
    /// rewound the pointer to the site by the time the program runs). The record goes back to
    /// the moment of the switch-out.
    fn backdate_delayed_probe(&mut self, e: &mut Event) {
        match &e.kind {
            // Any switch-out, voluntary ones included: the probe path can sleep (on the memory
            // map's lock) as well as be preempted.
            EventKind::Switch(s) if s.prev_user_ip != 0 => {
                self.switched_out_at.insert(e.tid, (e.ts, s.prev_user_ip));
            }
            EventKind::Switch(_) => {
                self.switched_out_at.remove(&e.tid);
            }
            EventKind::UserTask { ip, .. } => {
                if let Some((ts, out_ip)) = self.switched_out_at.remove(&e.tid)
                    && *ip != 0
                    && (out_ip == ip.wrapping_add(1) || out_ip == *ip)
                    && ts < e.ts
                {
                    e.ts = ts.saturating_sub(1); // just before the switch-out
                    self.tables.backdated_probes += 1;
                }
            }
            _ => {}
        }
    }

    fn take_tasks(&mut self, chunk: &RawChunk) -> Result<(), TraceError> {
        if !chunk.payload.len().is_multiple_of(TASK_ENTRY_LEN) {
            return Err(self.corrupt(
                chunk.offset,
                format!("task table of {} bytes is not a whole number of entries", chunk.payload.len()),
            ));
        }
        for mut e in chunk.payload.chunks_exact(TASK_ENTRY_LEN) {
            let ts = e.get_u64_le();
            let tid = e.get_u32_le();
            let pid = e.get_u32_le();
            let mut comm = [0u8; 16];
            e.copy_to_slice(&mut comm);
            let source = TaskSource::from_u8(e.get_u8()).unwrap_or(TaskSource::Unknown);
            self.tables.tasks.push(TaskEntry { ts, tid, pid, comm: Comm(comm), source });
        }
        Ok(())
    }

    fn parse_drops(&self, chunk: &RawChunk) -> Result<DropCounters, TraceError> {
        let mut p = &chunk.payload[..];
        if p.len() < 8 {
            return Err(self.corrupt(chunk.offset, "drop counters are cut off".into()));
        }
        let cpus = p.get_u32_le() as usize;
        let slots = p.get_u32_le() as usize;
        // Checked before the sizes are multiplied out: zero slots would let any CPU count pass.
        if cpus > MAX_DROP_CPUS || !(1..=MAX_DROP_SLOTS).contains(&slots) {
            return Err(self.corrupt(
                chunk.offset,
                format!("drop counters claim {cpus} CPUs × {slots} slots; at most {MAX_DROP_CPUS} × {MAX_DROP_SLOTS}"),
            ));
        }
        let expected = cpus.checked_mul(slots).and_then(|n| n.checked_mul(8)).and_then(|n| n.checked_add(16));
        if expected != Some(p.len()) {
            return Err(self.corrupt(
                chunk.offset,
                format!("drop counters claim {cpus} CPUs × {slots} slots in {} bytes", p.len()),
            ));
        }
        let mut per_cpu = Vec::with_capacity(cpus);
        for _ in 0..cpus {
            per_cpu.push((0..slots).map(|_| p.get_u64_le()).collect());
        }
        Ok(DropCounters { per_cpu, malformed: p.get_u64_le(), unreceived: p.get_u64_le() })
    }

    /// Reads the next whole chunk, or `None` at the end of the file (noting a partial chunk).
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, TraceError> {
        let start = self.offset;
        let mut head = [0u8; CHUNK_HEADER_LEN];
        let got = read_full(&mut self.src, &mut head).map_err(|e| TraceError::io(&self.path, e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < CHUNK_HEADER_LEN {
            return Ok(self.truncated(start));
        }
        if head[..4] != CHUNK_MAGIC {
            return Err(self.corrupt(start, "no chunk starts here (bad chunk magic)".into()));
        }
        let mut h = &head[4..];
        let kind = h.get_u8();
        let flags = h.get_u8();
        let reserved = h.get_u16_le();
        let stored_len = h.get_u32_le();
        let raw_len = h.get_u32_le();
        let crc = h.get_u32_le();
        if reserved != 0 {
            return Err(self.corrupt(start, format!("chunk header has reserved bits set ({reserved:#06x})")));
        }
        if stored_len > MAX_CHUNK_LEN || raw_len > MAX_CHUNK_LEN {
            return Err(self.corrupt(
                start,
                format!(
                    "chunk claims {stored_len} stored / {raw_len} raw bytes; the limit is {MAX_CHUNK_LEN}"
                ),
            ));
        }
        if flags & CHUNK_COMPRESSED != 0 && raw_len as u64 > stored_len as u64 * LZ4_MAX_RATIO + 64 {
            return Err(self.corrupt(
                start,
                format!(
                    "chunk claims {stored_len} compressed bytes decompress to {raw_len}, more than lz4 can"
                ),
            ));
        }
        let body_start = start + CHUNK_HEADER_LEN as u64;
        if body_start + stored_len as u64 > self.file_len {
            // The writer was cut off in the middle of this chunk.
            return Ok(self.truncated(start));
        }
        let mut stored = self.buffer();
        stored.resize(stored_len as usize, 0);
        let got = read_full(&mut self.src, &mut stored).map_err(|e| TraceError::io(&self.path, e))?;
        if got < stored.len() {
            return Ok(self.truncated(start));
        }
        self.offset = body_start + stored_len as u64;
        let mut check = crc32fast::Hasher::new();
        check.update(&head[..16]);
        check.update(&stored);
        if check.finalize() != crc {
            return Err(self.corrupt(start, "chunk checksum mismatch".into()));
        }
        let payload = if flags & CHUNK_COMPRESSED != 0 {
            let mut out = self.buffer();
            out.resize(raw_len as usize, 0);
            let result = lz4_flex::block::decompress_into(&stored, &mut out);
            self.spare.push(stored);
            match result {
                Ok(n) if n == out.len() => out,
                Ok(n) => {
                    return Err(self.corrupt(
                        start,
                        format!("chunk decompresses to {n} bytes, its header says {raw_len}"),
                    ));
                }
                Err(e) => return Err(self.corrupt(start, format!("chunk does not decompress: {e}"))),
            }
        } else {
            if raw_len != stored_len {
                return Err(self.corrupt(start, "uncompressed chunk with two different lengths".into()));
            }
            stored
        };
        let payload = if flags & CHUNK_COLUMNAR != 0 {
            if kind != ChunkKind::Events as u8 {
                return Err(self.corrupt(start, format!("chunk of kind {kind} claims the columnar layout")));
            }
            let mut records = self.buffer();
            let result = super::columnar::decode(&payload, &mut records);
            self.spare.push(payload);
            result.map_err(|what| self.corrupt(start, what))?;
            records
        } else {
            payload
        };
        Ok(Some(RawChunk { kind, offset: start, payload }))
    }

    fn truncated(&mut self, offset: u64) -> Option<RawChunk> {
        self.tables.truncation =
            Some(Truncation { offset, discarded_bytes: self.file_len.saturating_sub(offset) });
        None
    }

    fn corrupt(&self, offset: u64, what: String) -> TraceError {
        TraceError::Corrupt { path: self.path.clone(), offset, what }
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
