//! Writing trace files: one header, then self-contained checksummed chunks.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use bytes::BufMut;

use super::{
    DropCounters, TraceError,
    format::{
        CHUNK_COLUMNAR, CHUNK_COMPRESSED, CHUNK_HEADER_LEN, CHUNK_MAGIC, ChunkKind, EndInfo, FORMAT_VERSION,
        KernelSymbols, MAGIC, MAX_CHUNK_LEN, MappingsChunk, ProbesChunk, TASK_ENTRY_LEN, TaskEntry,
        TraceInfo, UserProbe,
    },
};

/// Writes a trace file. Every chunk goes out in a single `write_all`, and after a failed write
/// the file is cut back to the end of the last whole chunk, so what is on disk always reads.
///
/// A full disk must not cost the end of the story: before each chunk the writer allocates the
/// chunk's space plus [`RESERVE_BYTES`] past it (`fallocate`, keeping the file's size), so when
/// the disk fills, the chunk that does not fit is refused before any of it is written, and
/// [`TraceWriter::close_after_failure`] still has room for the loss counters and an end marker
/// that says where and why writing stopped.
pub struct TraceWriter {
    file: File,
    path: PathBuf,
    /// Bytes of whole chunks (and the header) on disk.
    good_len: u64,
    compress: bool,
    scratch: Vec<u8>,
    /// Whether the file system allocates ahead (`fallocate`); when it cannot, a full disk
    /// leaves the file without its end marker.
    reserving: bool,
    /// A write failed: nothing more goes into the file but its closing chunks.
    failed: bool,
}

/// Space kept allocated past the last whole chunk: room for the closing chunks (drop counters
/// of a thousand CPUs and the end marker) on a full disk.
pub const RESERVE_BYTES: u64 = 256 << 10;

impl TraceWriter {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path, info: &TraceInfo) -> Result<Self, TraceError> {
        let file = File::create(path).map_err(|e| TraceError::io(path, e))?;
        let mut w = TraceWriter {
            file,
            path: path.to_path_buf(),
            good_len: 0,
            compress: true,
            scratch: Vec::new(),
            reserving: true,
            failed: false,
        };
        w.write_raw(&encode_header(info)?)?;
        Ok(w)
    }

    /// Store payloads uncompressed (for tests and for inspecting files with a hex dump).
    pub fn set_compression(&mut self, on: bool) {
        self.compress = on;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (whole chunks only).
    pub fn len(&self) -> u64 {
        self.good_len
    }

    pub fn is_empty(&self) -> bool {
        self.good_len == 0
    }

    /// Writes one chunk.
    pub fn write_chunk(&mut self, kind: ChunkKind, payload: &[u8]) -> Result<(), TraceError> {
        self.write_chunk_flagged(kind, payload, 0)
    }

    /// Writes one chunk whose payload has `layout` flags (`CHUNK_COLUMNAR`).
    fn write_chunk_flagged(&mut self, kind: ChunkKind, payload: &[u8], layout: u8) -> Result<(), TraceError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let result = encode_chunk(kind as u8, layout, payload, self.compress, &mut buf)
            .and_then(|()| self.write_raw(&buf));
        self.scratch = buf;
        result
    }

    /// Writes records in columns when compressing (see `columnar`), back to back otherwise.
    pub fn write_events(&mut self, records: &[u8]) -> Result<(), TraceError> {
        if !self.compress {
            return self.write_chunk(ChunkKind::Events, records);
        }
        let columns = super::columnar::encode(records).map_err(TraceError::Encode)?;
        self.write_chunk_flagged(ChunkKind::Events, &columns, CHUNK_COLUMNAR)
    }

    pub fn write_tasks(&mut self, tasks: &[TaskEntry]) -> Result<(), TraceError> {
        let mut payload = Vec::with_capacity(tasks.len() * TASK_ENTRY_LEN);
        for t in tasks {
            payload.put_u64_le(t.ts);
            payload.put_u32_le(t.tid);
            payload.put_u32_le(t.pid);
            payload.put_slice(&t.comm.0);
            payload.put_u8(t.source as u8);
            payload.put_bytes(0, 7);
        }
        self.write_chunk(ChunkKind::Tasks, &payload)
    }

    pub fn write_drops(&mut self, drops: &DropCounters) -> Result<(), TraceError> {
        self.write_chunk(ChunkKind::Drops, &drops_payload(drops))
    }

    /// Writes stack-table entries: (stack id, its frames, leaf first).
    pub fn write_stacks(&mut self, stacks: &[(u32, Vec<u64>)]) -> Result<(), TraceError> {
        // Chunks of at most about a megabyte, like the events'.
        let mut payload = Vec::new();
        for (id, frames) in stacks {
            let frames = &frames[..frames.len().min(u16::MAX as usize)];
            payload.put_u32_le(*id);
            payload.put_u16_le(frames.len() as u16);
            payload.put_u16_le(0);
            for f in frames {
                payload.put_u64_le(*f);
            }
            if payload.len() >= 1 << 20 {
                self.write_chunk(ChunkKind::Stacks, &payload)?;
                payload.clear();
            }
        }
        if payload.is_empty() { Ok(()) } else { self.write_chunk(ChunkKind::Stacks, &payload) }
    }

    /// Writes a snapshot of a process's executable mappings.
    pub fn write_mappings(&mut self, m: &MappingsChunk) -> Result<(), TraceError> {
        let body = serde_json::to_vec(m).map_err(|e| TraceError::Encode(e.to_string()))?;
        self.write_chunk(ChunkKind::Mappings, &body)
    }

    /// Writes the kernel functions the kernel stacks' addresses fall in.
    pub fn write_kernel_symbols(&mut self, k: &KernelSymbols) -> Result<(), TraceError> {
        let body = serde_json::to_vec(k).map_err(|e| TraceError::Encode(e.to_string()))?;
        self.write_chunk(ChunkKind::KernelSymbols, &body)
    }

    /// Writes what is known of the traced Go programs (see [`super::format::GoChunk`]).
    pub fn write_go(&mut self, g: &super::format::GoChunk) -> Result<(), TraceError> {
        let body = serde_json::to_vec(g).map_err(|e| TraceError::Encode(e.to_string()))?;
        self.write_chunk(ChunkKind::Go, &body)
    }

    /// Records what the recorder learned about cgroups since the last such chunk.
    pub fn write_cgroups(&mut self, c: &super::format::CgroupsChunk) -> Result<(), TraceError> {
        let body = serde_json::to_vec(c).map_err(|e| TraceError::Encode(e.to_string()))?;
        self.write_chunk(ChunkKind::Cgroups, &body)
    }

    /// Records user-level probes attached during the recording (before any record of theirs).
    pub fn write_probes(&mut self, added: &[UserProbe], skipped: &[String]) -> Result<(), TraceError> {
        let chunk = ProbesChunk { added: added.to_vec(), skipped: skipped.to_vec() };
        let body = serde_json::to_vec(&chunk).map_err(|e| TraceError::Encode(e.to_string()))?;
        self.write_chunk(ChunkKind::Probes, &body)
    }

    /// Writes the END chunk and flushes the file to disk.
    pub fn finish(mut self, end: &EndInfo) -> Result<u64, TraceError> {
        let body = serde_json::to_vec(end).map_err(|e| TraceError::Encode(e.to_string()))?;
        let mut closing = Vec::new();
        encode_chunk(ChunkKind::End as u8, 0, &body, false, &mut closing)?;
        self.write_closing(&closing)
    }

    /// After a failed write: writes the loss counters and an end marker (which should say why
    /// writing stopped) into the space allocated ahead, and returns the file's length. Without
    /// that space (a file system that cannot allocate ahead) the file ends at its last whole
    /// chunk, with no end marker, and the error says so.
    pub fn close_after_failure(mut self, drops: &DropCounters, end: &EndInfo) -> Result<u64, TraceError> {
        let body = serde_json::to_vec(end).map_err(|e| TraceError::Encode(e.to_string()))?;
        let mut closing = Vec::new();
        encode_chunk(ChunkKind::Drops as u8, 0, &drops_payload(drops), false, &mut closing)?;
        encode_chunk(ChunkKind::End as u8, 0, &body, false, &mut closing)?;
        if !self.reserving {
            let _ = self.file.set_len(self.good_len);
            return Err(TraceError::Encode("no space was allocated ahead for the end marker".into()));
        }
        self.write_closing(&closing)
    }

    /// Writes the closing chunks at the end of the last whole chunk, into the space allocated
    /// ahead (no new allocation: this works on a full disk), gives back what is left of that
    /// space, and flushes the file to disk.
    fn write_closing(&mut self, closing: &[u8]) -> Result<u64, TraceError> {
        if self.reserving && closing.len() as u64 > RESERVE_BYTES {
            return Err(TraceError::Encode(format!(
                "closing chunks of {} bytes exceed the reserve",
                closing.len()
            )));
        }
        let end = self.good_len + closing.len() as u64;
        let written = io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.good_len))
            .and_then(|_| self.file.write_all(closing))
            .and_then(|()| self.file.set_len(end))
            .and_then(|()| self.file.sync_all());
        match written {
            Ok(()) => {
                self.good_len = end;
                Ok(end)
            }
            Err(e) => {
                let _ = self.file.set_len(self.good_len);
                Err(TraceError::io(&self.path, e))
            }
        }
    }

    /// Flushes what was written so far to disk (the file stays open).
    pub fn sync(&mut self) -> Result<(), TraceError> {
        self.file.sync_data().map_err(|e| TraceError::io(&self.path, e))
    }

    /// Allocates `len` bytes and the reserve after them, from the end of the last whole chunk.
    fn allocate_ahead(&mut self, len: u64) -> io::Result<()> {
        if !self.reserving {
            return Ok(());
        }
        let (at, len) = (self.good_len as libc::off_t, (len + RESERVE_BYTES) as libc::off_t);
        // SAFETY: fallocate(2) on our own open file.
        if unsafe {
            libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&self.file), libc::FALLOC_FL_KEEP_SIZE, at, len)
        } == 0
        {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                self.reserving = false; // this file system cannot: write without it
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn write_raw(&mut self, buf: &[u8]) -> Result<(), TraceError> {
        if self.failed {
            return Err(TraceError::io(
                &self.path,
                io::Error::other("an earlier write to this trace failed"),
            ));
        }
        let result = self.allocate_ahead(buf.len() as u64).and_then(|()| self.file.write_all(buf));
        match result {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                // Back to the end of the last whole chunk. Without space allocated ahead, cut
                // the partial chunk off (which needs no free space); with it, keep the space
                // for the closing chunks, which overwrite the partial one.
                if !self.reserving {
                    let _ = self.file.set_len(self.good_len);
                }
                let _ = io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.good_len));
                Err(TraceError::io(&self.path, e))
            }
        }
    }
}

/// A `DROPS` chunk's payload: CPUs, slots per CPU, the counters, and the recorder's own counts.
fn drops_payload(drops: &DropCounters) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.put_u32_le(drops.per_cpu.len() as u32);
    payload.put_u32_le(DropCounters::SLOTS as u32);
    for cpu in &drops.per_cpu {
        for i in 0..DropCounters::SLOTS {
            payload.put_u64_le(cpu.get(i).copied().unwrap_or(0));
        }
    }
    payload.put_u64_le(drops.malformed);
    payload.put_u64_le(drops.unreceived);
    payload
}

/// The file header: magic, version, and the recording's facts.
pub fn encode_header(info: &TraceInfo) -> Result<Vec<u8>, TraceError> {
    let body = serde_json::to_vec(info).map_err(|e| TraceError::Encode(e.to_string()))?;
    if body.len() > super::format::MAX_INFO_LEN as usize {
        return Err(TraceError::Encode(format!(
            "recording facts of {} bytes exceed the format's limit",
            body.len()
        )));
    }
    Ok(frame_header(&body))
}

/// The file header around `facts`, the recording's facts as JSON (any bytes: tools that
/// rewrite traces write facts this version would refuse).
pub fn frame_header(facts: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(super::format::FILE_HEADER_LEN + facts.len());
    header.put_slice(&MAGIC);
    header.put_u16_le(FORMAT_VERSION);
    header.put_u16_le(0);
    header.put_u32_le(facts.len() as u32);
    header.put_u32_le(crc32fast::hash(facts));
    header.put_slice(facts);
    header
}

/// Appends one chunk of kind `kind` to `out`: its header, checksum and payload, compressed
/// when `compress` and worth it. `layout`: flags saying how the payload is laid out
/// (`CHUNK_COLUMNAR`). Any kind byte may be written: tools that rewrite traces (the fuzz
/// harness) write kinds this version does not know.
pub fn encode_chunk(
    kind: u8,
    layout: u8,
    payload: &[u8],
    compress: bool,
    out: &mut Vec<u8>,
) -> Result<(), TraceError> {
    if payload.len() > MAX_CHUNK_LEN as usize {
        return Err(TraceError::Encode(format!(
            "chunk of {} bytes exceeds the format's limit of {MAX_CHUNK_LEN}",
            payload.len()
        )));
    }
    out.reserve(CHUNK_HEADER_LEN + payload.len());
    let start = out.len();
    out.put_slice(&CHUNK_MAGIC);
    out.put_u8(kind);
    let compressed =
        if compress && payload.len() > 256 { Some(lz4_flex::block::compress(payload)) } else { None };
    let (flags, stored): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < payload.len() => (CHUNK_COMPRESSED, c),
        _ => (0, payload),
    };
    out.put_u8(flags | layout);
    out.put_u16_le(0);
    out.put_u32_le(stored.len() as u32);
    out.put_u32_le(payload.len() as u32);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 16]);
    crc.update(stored);
    out.put_u32_le(crc.finalize());
    out.put_slice(stored);
    Ok(())
}
