//! A chunk's payload from its stored form to what the reader hands on: decompressed, and rebuilt
//! into records from the column layout. This is most of the cost of reading a trace, and every
//! chunk decodes on its own, so the reader runs it on worker threads ([`Pool`]) while it reads
//! the next chunks and the caller consumes the ones before, in file order.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, Sender, channel},
    },
    thread::JoinHandle,
};

use super::format::{CHUNK_COLUMNAR, CHUNK_COMPRESSED, ChunkKind};

/// A whole chunk as read from the file (its checksum checked), not yet decoded.
pub(crate) struct Stored {
    pub kind: u8,
    pub flags: u8,
    pub raw_len: u32,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A decoded chunk, or why it does not decode; and the buffers it no longer needs.
pub(crate) struct Decoded {
    pub kind: u8,
    pub offset: u64,
    pub payload: Result<Vec<u8>, String>,
    pub spares: Vec<Vec<u8>>,
}

/// Gives a reused buffer the length `len`, for a caller that overwrites all of it: what it
/// held stays (zeroing megabytes that are about to be overwritten is a pass for nothing). When
/// its allocation must grow, the old contents are dropped rather than copied over, and it
/// grows by half again: chunks vary in size, and a buffer grown to fit exactly would be grown
/// (and zeroed) again by the next larger one.
pub(crate) fn resize_for_overwrite(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        buf.clear();
        buf.reserve(len.saturating_add(len / 2));
    }
    buf.resize(len, 0);
}

/// Decodes `s`, into `out` and through `tmp` (buffers to reuse, whatever they hold: it is
/// overwritten).
pub(crate) fn decode(s: Stored, mut out: Vec<u8>, mut tmp: Vec<u8>) -> Decoded {
    let (kind, offset) = (s.kind, s.offset);
    let mut spares = Vec::with_capacity(2);
    let payload = (|| {
        let payload = if s.flags & CHUNK_COMPRESSED != 0 {
            // The decompressor writes every byte it reports, and the count is checked.
            resize_for_overwrite(&mut tmp, s.raw_len as usize);
            let n = lz4_flex::block::decompress_into(&s.bytes, &mut tmp)
                .map_err(|e| format!("chunk does not decompress: {e}"))?;
            if n != tmp.len() {
                return Err(format!("chunk decompresses to {n} bytes, its header says {}", s.raw_len));
            }
            spares.push(s.bytes);
            std::mem::take(&mut tmp)
        } else {
            if s.raw_len as usize != s.bytes.len() {
                return Err("uncompressed chunk with two different lengths".into());
            }
            s.bytes
        };
        if s.flags & CHUNK_COLUMNAR == 0 {
            return Ok(payload);
        }
        if kind != ChunkKind::Events as u8 {
            return Err(format!("chunk of kind {kind} claims the columnar layout"));
        }
        let result = super::columnar::decode(&payload, &mut out);
        spares.push(payload);
        result.map(|()| std::mem::take(&mut out))
    })();
    spares.extend([out, tmp].into_iter().filter(|b| b.capacity() > 0));
    Decoded { kind, offset, payload, spares }
}

struct Job {
    seq: u64,
    stored: Stored,
    buffers: [Vec<u8>; 2],
}

/// Worker threads that decode chunks; results come back in the order they were submitted.
pub(crate) struct Pool {
    jobs: Option<Sender<Job>>,
    results: Receiver<(u64, Decoded)>,
    workers: Vec<JoinHandle<()>>,
    submitted: u64,
    next_out: u64,
    ready: BTreeMap<u64, Decoded>,
}

impl Pool {
    /// `n` workers, or `None` when one would not help (a single CPU).
    pub fn new(n: usize) -> Option<Pool> {
        if n < 2 {
            return None;
        }
        let (jobs, inbox) = channel::<Job>();
        let (done, results) = channel();
        let inbox = Arc::new(Mutex::new(inbox));
        let workers = (0..n)
            .filter_map(|i| {
                let (inbox, done) = (inbox.clone(), done.clone());
                std::thread::Builder::new()
                    .name(format!("sched-trace-decode-{i}"))
                    .spawn(move || {
                        loop {
                            // The lock is held only while waiting for the next job.
                            let job = match inbox.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok(Job { seq, stored, buffers: [out, tmp] }) = job else { return };
                            if done.send((seq, decode(stored, out, tmp))).is_err() {
                                return;
                            }
                        }
                    })
                    .ok()
            })
            .collect::<Vec<_>>();
        if workers.is_empty() {
            return None;
        }
        Some(Pool { jobs: Some(jobs), results, workers, submitted: 0, next_out: 0, ready: BTreeMap::new() })
    }

    /// Chunks submitted and not yet taken back.
    pub fn in_flight(&self) -> u64 {
        self.submitted - self.next_out
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn submit(&mut self, stored: Stored, buffers: [Vec<u8>; 2]) {
        let seq = self.submitted;
        self.submitted += 1;
        let job = Job { seq, stored, buffers };
        if let Some(Err(failed)) = self.jobs.as_ref().map(|j| j.send(job)) {
            // Every worker is gone (it cannot happen while the pool lives); decode here.
            let Job { seq, stored, buffers: [out, tmp] } = failed.0;
            self.ready.insert(seq, decode(stored, out, tmp));
        }
    }

    /// The next chunk in submission order (waits for it), `None` when nothing is in flight.
    pub fn next(&mut self) -> Option<Decoded> {
        if self.in_flight() == 0 {
            return None;
        }
        loop {
            if let Some(d) = self.ready.remove(&self.next_out) {
                self.next_out += 1;
                return Some(d);
            }
            match self.results.recv() {
                Ok((seq, d)) => {
                    self.ready.insert(seq, d);
                }
                // Cannot happen while `jobs` is held: each worker holds a sender.
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None; // the workers see the channel close and stop
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
