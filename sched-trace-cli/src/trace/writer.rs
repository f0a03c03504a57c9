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
        MAGIC, MAX_CHUNK_LEN, ProbesChunk, TASK_ENTRY_LEN, TaskEntry, TraceInfo, UserProbe,
    },
};

/// Writes a trace file. Every chunk goes out in a single `write_all`, and after a failed write
/// the file is cut back to the end of the last whole chunk, so what is on disk always reads.
pub struct TraceWriter {
    file: File,
    path: PathBuf,
    /// Bytes of whole chunks (and the header) on disk.
    good_len: u64,
    compress: bool,
    scratch: Vec<u8>,
}

impl TraceWriter {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path, info: &TraceInfo) -> Result<Self, TraceError> {
        let file = File::create(path).map_err(|e| TraceError::io(path, e))?;
        let mut w =
            TraceWriter { file, path: path.to_path_buf(), good_len: 0, compress: true, scratch: Vec::new() };
        let body = serde_json::to_vec(info).map_err(|e| TraceError::Encode(e.to_string()))?;
        let mut header = Vec::with_capacity(super::format::FILE_HEADER_LEN + body.len());
        header.put_slice(&MAGIC);
        header.put_u16_le(FORMAT_VERSION);
        header.put_u16_le(0);
        header.put_u32_le(body.len() as u32);
        header.put_u32_le(crc32fast::hash(&body));
        header.put_slice(&body);
        w.write_raw(&header)?;
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
        if payload.len() > MAX_CHUNK_LEN as usize {
            return Err(TraceError::Encode(format!(
                "chunk of {} bytes exceeds the format's limit of {MAX_CHUNK_LEN}",
                payload.len()
            )));
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.reserve(CHUNK_HEADER_LEN + payload.len());
        buf.put_slice(&CHUNK_MAGIC);
        buf.put_u8(kind as u8);
        let compressed = if self.compress && payload.len() > 256 {
            Some(lz4_flex::block::compress(payload))
        } else {
            None
        };
        let (flags, stored): (u8, &[u8]) = match &compressed {
            Some(c) if c.len() < payload.len() => (CHUNK_COMPRESSED, c),
            _ => (0, payload),
        };
        buf.put_u8(flags | layout);
        buf.put_u16_le(0);
        buf.put_u32_le(stored.len() as u32);
        buf.put_u32_le(payload.len() as u32);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[buf.len() - 16..]);
        crc.update(stored);
        buf.put_u32_le(crc.finalize());
        buf.put_slice(stored);
        let result = self.write_raw(&buf);
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
        let mut payload = Vec::new();
        payload.put_u32_le(drops.per_cpu.len() as u32);
        payload.put_u32_le(DropCounters::SLOTS as u32);
        for cpu in &drops.per_cpu {
            for &c in cpu {
                payload.put_u64_le(c);
            }
        }
        payload.put_u64_le(drops.malformed);
        payload.put_u64_le(drops.unreceived);
        self.write_chunk(ChunkKind::Drops, &payload)
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
        self.write_chunk(ChunkKind::End, &body)?;
        self.file.sync_all().map_err(|e| TraceError::io(&self.path, e))?;
        Ok(self.good_len)
    }

    /// Flushes what was written so far to disk (the file stays open).
    pub fn sync(&mut self) -> Result<(), TraceError> {
        self.file.sync_data().map_err(|e| TraceError::io(&self.path, e))
    }

    fn write_raw(&mut self, buf: &[u8]) -> Result<(), TraceError> {
        match self.file.write_all(buf) {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partly written chunk off, so the file ends on a chunk boundary. This
                // needs no free space, so it works on a full disk too.
                let _ = self.file.set_len(self.good_len);
                let _ = io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.good_len));
                Err(TraceError::io(&self.path, e))
            }
        }
    }
}
