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
        CHUNK_COMPRESSED, CHUNK_HEADER_LEN, CHUNK_MAGIC, ChunkKind, EndInfo, FILE_HEADER_LEN, FORMAT_VERSION,
        MAGIC, MAX_CHUNK_LEN, MAX_INFO_LEN, ProbesChunk, TASK_ENTRY_LEN, TaskEntry, TaskSource, TraceInfo,
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
    /// The stack table: stack id → frames, leaf first.
    pub stacks: rustc_hash::FxHashMap<u32, Vec<u64>>,
    /// Snapshots of the traced processes' executable mappings, in file order.
    pub mappings: Vec<super::format::MappingsChunk>,
    /// Kernel addresses of the kernel stacks and their functions, by address.
    pub kernel_symbols: Vec<(u64, String)>,
    /// The Go programs that were traced (the last description of each process counts)...
    pub go_processes: Vec<super::format::GoProcess>,
    /// ...and the functions their goroutines started with, by (pid, start pc).
    pub go_start_functions: rustc_hash::FxHashMap<(u32, u64), String>,
    /// Cgroups of the traced tasks, their CPU controls and throttling.
    pub cgroups: super::cgroups::CgroupTables,
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
    /// Events in time order: the first `ready` are ready to hand out; the others are held back
    /// because a later chunk may still hold earlier ones. A ring, so that an event is copied
    /// once on its way from the chunk to the caller (the held-back ones, about a chunk's worth,
    /// stay where they are).
    pending: std::collections::VecDeque<Event>,
    ready: usize,
    eof: bool,
    last_emitted: u64,
    /// Per thread, its last switch-out while runnable: (time, user instruction pointer).
    switched_out_at: rustc_hash::FxHashMap<u32, (u64, u64)>,
    /// Chunk buffers to reuse (a fresh megabyte per chunk costs page faults).
    spare: Vec<Vec<u8>>,
    /// Where each user-level probe is in `info.user_probes`, by its index.
    probe_slots: rustc_hash::FxHashMap<u32, usize>,
    limits: super::validate::EventLimits,
    /// Decodes chunks ahead on worker threads (none on a single CPU), started by the first
    /// chunk read.
    pool: Option<super::decode::Pool>,
    pool_started: bool,
    /// The file has no more chunks to read...
    read_done: bool,
    /// ...or reading the next one failed (returned after the chunks before it).
    read_failure: Option<TraceError>,
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
        if !(sched_trace_abi::OLDEST_ABI_VERSION..=sched_trace_abi::ABI_VERSION).contains(&info.abi_version) {
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
            pool: None,
            pool_started: false,
            read_done: false,
            read_failure: None,
            src,
            path: path.to_path_buf(),
            offset: (FILE_HEADER_LEN + body.len()) as u64,
            file_len,
            info,
            tables: TraceTables::default(),
            pending: Default::default(),
            ready: 0,
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
            if self.ready > 0
                && let Some(mut e) = self.pending.pop_front()
            {
                self.ready -= 1;
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
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                self.ready = self.pending.len();
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

    /// A buffer for `len` bytes from the spares if there is one (the smallest that holds them,
    /// else the largest), holding what it held: every user overwrites the part it uses (see
    /// [`super::decode::resize_for_overwrite`]). Chunks need buffers of two sizes, stored and
    /// decoded; one too small would be grown, and zeroed, for every chunk.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() >= len;
        let pick = self
            .spare
            .iter()
            .enumerate()
            .filter(|(_, b)| fits(b))
            .min_by_key(|(_, b)| b.capacity())
            .or_else(|| self.spare.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
            .map(|(i, _)| i);
        pick.map(|i| self.spare.swap_remove(i)).unwrap_or_default()
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
            Some(ChunkKind::Stacks) => parse_stacks(&chunk.payload, &mut self.tables.stacks)
                .map_err(|what| self.corrupt(chunk.offset, what))?,
            Some(ChunkKind::Mappings) => {
                let m = serde_json::from_slice(&chunk.payload).map_err(|e| {
                    self.corrupt(chunk.offset, format!("a mappings table does not parse: {e}"))
                })?;
                self.tables.mappings.push(m);
            }
            Some(ChunkKind::KernelSymbols) => {
                let k: super::format::KernelSymbols =
                    serde_json::from_slice(&chunk.payload).map_err(|e| {
                        self.corrupt(chunk.offset, format!("the kernel symbols do not parse: {e}"))
                    })?;
                self.tables.kernel_symbols.extend(k.symbols);
                self.tables.kernel_symbols.sort_unstable_by_key(|s| s.0);
            }
            Some(ChunkKind::Go) => {
                let g: super::format::GoChunk = serde_json::from_slice(&chunk.payload).map_err(|e| {
                    self.corrupt(chunk.offset, format!("the Go programs' table does not parse: {e}"))
                })?;
                for p in g.processes {
                    self.tables.go_processes.retain(|q| q.pid != p.pid);
                    self.tables.go_processes.push(p);
                }
                for (pid, pc, name) in g.start_functions {
                    self.tables.go_start_functions.insert((pid, pc), name);
                }
            }
            Some(ChunkKind::Cgroups) => {
                let c: super::format::CgroupsChunk = serde_json::from_slice(&chunk.payload).map_err(|e| {
                    self.corrupt(chunk.offset, format!("the cgroup table does not parse: {e}"))
                })?;
                self.tables.cgroups.merge(c);
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
        // Whether the held-back events and this chunk's are in time order, seen as they come
        // (a second pass over a chunk's events would read them back from beyond the cache).
        let (mut sorted, mut last) = (true, self.pending.back().map_or(0, |e| e.ts));
        while !buf.is_empty() {
            match decode(buf) {
                Ok(Decoded::Event(mut e, size)) => {
                    self.backdate_delayed_probe(&mut e);
                    sorted &= e.ts >= last;
                    last = e.ts;
                    self.pending.push_back(e);
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
        if !sorted {
            // Stable: equal timestamps keep file order.
            self.pending.make_contiguous().sort_by_key(|e| e.ts);
        }
        let newest = self.pending.back().map_or(0, |e| e.ts);
        let horizon = newest.saturating_sub(REORDER_WINDOW_NS);
        self.ready = self.pending.partition_point(|e| e.ts <= horizon);
        Ok(())
    }

    /// A thread can be rescheduled on its way back from a uprobe's breakpoint, before the probe's
    /// program runs: the record's timestamp is then late by the time the thread waited. Its
    /// switch-out shows it: the thread's user instruction pointer is just past the breakpoint
    /// (the probe site + 1), and the probe's record says which site it was (the kernel has
    /// rewound the pointer to the site by the time the program runs). The record goes back to
    /// the moment of the switch-out. (Nothing to do before any probe is in the probe table,
    /// which comes before the first of its records: most traces have none.)
    fn backdate_delayed_probe(&mut self, e: &mut Event) {
        if self.info.user_probes.is_empty() {
            return;
        }
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
        parse_tasks(&chunk.payload, &mut self.tables.tasks).map_err(|what| self.corrupt(chunk.offset, what))
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

    /// The next whole chunk, decoded, or `None` at the end of the file (noting a partial chunk).
    /// With a decode pool, the next chunks are read and handed to it ahead of the caller, which
    /// gets them in file order; an error reading one is returned once the chunks before it are.
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, TraceError> {
        if !self.pool_started {
            self.pool_started = true;
            self.pool = super::decode::Pool::new(decode_threads());
        }
        let Some(depth) = self.pool.as_ref().map(|p| 2 * p.workers() as u64 + 1) else {
            return match self.read_stored()? {
                None => Ok(None),
                Some(stored) => {
                    let len = stored.raw_len as usize;
                    let (out, tmp) = (self.buffer(len), self.buffer(len));
                    self.finish_decode(super::decode::decode(stored, out, tmp)).map(Some)
                }
            };
        };
        while self.read_failure.is_none()
            && !self.read_done
            && self.pool.as_ref().is_some_and(|p| p.in_flight() < depth)
        {
            match self.read_stored() {
                Ok(Some(stored)) => {
                    let len = stored.raw_len as usize;
                    let buffers = [self.buffer(len), self.buffer(len)];
                    if let Some(p) = self.pool.as_mut() {
                        p.submit(stored, buffers);
                    }
                }
                Ok(None) => self.read_done = true,
                Err(e) => self.read_failure = Some(e),
            }
        }
        match self.pool.as_mut().and_then(|p| p.next()) {
            Some(decoded) => self.finish_decode(decoded).map(Some),
            None => self.read_failure.take().map_or(Ok(None), Err),
        }
    }

    fn finish_decode(&mut self, d: super::decode::Decoded) -> Result<RawChunk, TraceError> {
        self.spare.extend(d.spares);
        // Enough for every chunk in flight (three buffers each), so that none is allocated anew.
        let in_flight = self.pool.as_ref().map_or(1, |p| 2 * p.workers() + 2);
        self.spare.truncate(3 * in_flight);
        d.payload
            .map(|payload| RawChunk { kind: d.kind, offset: d.offset, payload })
            .map_err(|what| self.corrupt(d.offset, what))
    }

    /// Reads the next whole chunk as stored, its checksum checked, or `None` at the end of the
    /// file (noting a partial chunk).
    fn read_stored(&mut self) -> Result<Option<super::decode::Stored>, TraceError> {
        let start = self.offset;
        let mut head = [0u8; CHUNK_HEADER_LEN];
        let got = read_full(&mut self.src, &mut head).map_err(|e| TraceError::io(&self.path, e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < CHUNK_HEADER_LEN {
            self.truncated(start);
            return Ok(None);
        }
        let ChunkHeader { kind, flags, stored_len, raw_len, crc } =
            ChunkHeader::parse(&head).map_err(|what| self.corrupt(start, what))?;
        let body_start = start + CHUNK_HEADER_LEN as u64;
        if body_start + stored_len as u64 > self.file_len {
            // The writer was cut off in the middle of this chunk.
            self.truncated(start);
            return Ok(None);
        }
        let mut stored = self.buffer(stored_len as usize);
        super::decode::resize_for_overwrite(&mut stored, stored_len as usize); // the read fills it
        let got = read_full(&mut self.src, &mut stored).map_err(|e| TraceError::io(&self.path, e))?;
        if got < stored.len() {
            self.truncated(start);
            return Ok(None);
        }
        self.offset = body_start + stored_len as u64;
        let mut check = crc32fast::Hasher::new();
        check.update(&head[..16]);
        check.update(&stored);
        if check.finalize() != crc {
            return Err(self.corrupt(start, "chunk checksum mismatch".into()));
        }
        Ok(Some(super::decode::Stored { kind, flags, raw_len, offset: start, bytes: stored }))
    }

    fn truncated(&mut self, offset: u64) {
        self.tables.truncation =
            Some(Truncation { offset, discarded_bytes: self.file_len.saturating_sub(offset) });
    }

    fn corrupt(&self, offset: u64, what: String) -> TraceError {
        TraceError::Corrupt { path: self.path.clone(), offset, what }
    }
}

/// Adds the entries of a `STACKS` payload to `out` (a later entry for an id replaces one before).
fn parse_stacks(mut p: &[u8], out: &mut rustc_hash::FxHashMap<u32, Vec<u64>>) -> Result<(), String> {
    while !p.is_empty() {
        if p.len() < 8 {
            return Err(format!("stack table entry cut off ({} bytes left)", p.len()));
        }
        let (id, depth) = (p.get_u32_le(), p.get_u16_le() as usize);
        p.advance(2);
        if p.len() < depth * 8 {
            return Err(format!("stack {id} claims {depth} frames; {} bytes are left", p.len()));
        }
        out.insert(id, (0..depth).map(|_| p.get_u64_le()).collect());
    }
    Ok(())
}

/// Appends the entries of a `TASKS` payload to `out`.
fn parse_tasks(payload: &[u8], out: &mut Vec<TaskEntry>) -> Result<(), String> {
    if !payload.len().is_multiple_of(TASK_ENTRY_LEN) {
        return Err(format!("task table of {} bytes is not a whole number of entries", payload.len()));
    }
    for mut e in payload.chunks_exact(TASK_ENTRY_LEN) {
        let ts = e.get_u64_le();
        let tid = e.get_u32_le();
        let pid = e.get_u32_le();
        let mut comm = [0u8; 16];
        e.copy_to_slice(&mut comm);
        let source = TaskSource::from_u8(e.get_u8()).unwrap_or(TaskSource::Unknown);
        out.push(TaskEntry { ts, tid, pid, comm: Comm(comm), source });
    }
    Ok(())
}

/// The fields of a chunk's header, checked against the format's limits.
struct ChunkHeader {
    kind: u8,
    flags: u8,
    stored_len: u32,
    raw_len: u32,
    crc: u32,
}

impl ChunkHeader {
    fn parse(head: &[u8; CHUNK_HEADER_LEN]) -> Result<ChunkHeader, String> {
        if head[..4] != CHUNK_MAGIC {
            return Err("no chunk starts here (bad chunk magic)".into());
        }
        let mut h = &head[4..];
        let (kind, flags, reserved) = (h.get_u8(), h.get_u8(), h.get_u16_le());
        let (stored_len, raw_len, crc) = (h.get_u32_le(), h.get_u32_le(), h.get_u32_le());
        if reserved != 0 {
            return Err(format!("chunk header has reserved bits set ({reserved:#06x})"));
        }
        if stored_len > MAX_CHUNK_LEN || raw_len > MAX_CHUNK_LEN {
            return Err(format!(
                "chunk claims {stored_len} stored / {raw_len} raw bytes; the limit is {MAX_CHUNK_LEN}"
            ));
        }
        if flags & CHUNK_COMPRESSED != 0 && raw_len as u64 > stored_len as u64 * LZ4_MAX_RATIO + 64 {
            return Err(format!(
                "chunk claims {stored_len} compressed bytes decompress to {raw_len}, more than lz4 can"
            ));
        }
        Ok(ChunkHeader { kind, flags, stored_len, raw_len, crc })
    }
}

/// What a trace says before its events are read: when the recording started and ended (the end
/// marker's time, or the newest event of the last whole events chunk if later), and its task
/// table.
/// Found by walking the chunk headers, decoding only the small chunks. For analyses that lay
/// time out, or need names, before their one pass over the events (the heat map).
#[derive(Clone, Debug)]
pub struct Prescan {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tasks: Vec<TaskEntry>,
    /// The cgroup table (what a `--cgroup` filter looks up).
    pub cgroups: super::cgroups::CgroupTables,
}

/// The [`Prescan`] of the trace at `path`.
pub fn prescan(path: &Path) -> Result<Prescan, TraceError> {
    let mut file = File::open(path).map_err(|e| TraceError::io(path, e))?;
    let len = file.metadata().map_err(|e| TraceError::io(path, e))?.len();
    prescan_of(&mut BufReader::new(&mut file), path, len)
}

/// [`prescan`] of a source of `len` bytes named `path` in errors.
pub fn prescan_of<R: Read + std::io::Seek>(
    file: &mut R,
    path: &Path,
    len: u64,
) -> Result<Prescan, TraceError> {
    use std::io::SeekFrom;
    let reader = TraceReader::new(&mut *file, path, len)?;
    let (start, mut offset) = (reader.info().start_ns, reader.offset);
    drop(reader);
    let corrupt = |offset: u64, what: String| TraceError::Corrupt { path: path.to_path_buf(), offset, what };
    let (mut end_marker, mut last_events, mut tasks) = (None, None, Vec::new());
    let mut cgroups = super::cgroups::CgroupTables::default();
    loop {
        let mut head = [0u8; CHUNK_HEADER_LEN];
        file.seek(SeekFrom::Start(offset)).map_err(|e| TraceError::io(path, e))?;
        if read_full(file, &mut head).map_err(|e| TraceError::io(path, e))? < CHUNK_HEADER_LEN {
            break;
        }
        let h = ChunkHeader::parse(&head).map_err(|what| corrupt(offset, what))?;
        let body = offset + CHUNK_HEADER_LEN as u64;
        if body + h.stored_len as u64 > len {
            break; // cut off: the reader says so when it gets there
        }
        let wanted =
            [ChunkKind::End as u8, ChunkKind::Events as u8, ChunkKind::Tasks as u8, ChunkKind::Cgroups as u8];
        if wanted.contains(&h.kind) {
            let mut stored = vec![0u8; h.stored_len as usize];
            read_full(file, &mut stored).map_err(|e| TraceError::io(path, e))?;
            if h.kind == ChunkKind::Events as u8 {
                last_events = Some((h.flags, h.raw_len, offset, stored));
            } else {
                let stored = super::decode::Stored {
                    kind: h.kind,
                    flags: h.flags,
                    raw_len: h.raw_len,
                    offset,
                    bytes: stored,
                };
                // A chunk that does not decode is the reader's to report, when it gets there.
                if let Ok(p) = super::decode::decode(stored, Vec::new(), Vec::new()).payload {
                    if h.kind == ChunkKind::End as u8 {
                        end_marker = serde_json::from_slice::<EndInfo>(&p).ok().map(|e| e.end_ns);
                    } else if h.kind == ChunkKind::Cgroups as u8 {
                        if let Ok(c) = serde_json::from_slice(&p) {
                            cgroups.merge(c);
                        }
                    } else {
                        let _ = parse_tasks(&p, &mut tasks);
                    }
                }
            }
        }
        offset = body + h.stored_len as u64;
    }
    // The newest event of the last events chunk, and the end marker's time when there is one.
    let newest = last_events.and_then(|(flags, raw_len, offset, bytes)| {
        let stored = super::decode::Stored { kind: ChunkKind::Events as u8, flags, raw_len, offset, bytes };
        let records = super::decode::decode(stored, Vec::new(), Vec::new()).payload.ok()?;
        let mut newest = 0;
        let mut at = &records[..];
        while let Ok(d) = decode(at) {
            let size = match d {
                Decoded::Event(e, size) => {
                    newest = newest.max(e.ts);
                    size
                }
                Decoded::Unknown { size, .. } => size,
            };
            at = &at[size..];
        }
        Some(newest)
    });
    let end = end_marker.into_iter().chain(newest).max().unwrap_or(start);
    Ok(Prescan { start_ns: start, end_ns: end.max(start), tasks, cgroups })
}

/// Worker threads decoding chunks: one per CPU (`SCHED_TRACE_READER_THREADS` overrides; 1
/// decodes on the reading thread).
fn decode_threads() -> usize {
    std::env::var("SCHED_TRACE_READER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
