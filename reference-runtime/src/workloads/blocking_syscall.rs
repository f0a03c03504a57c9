//! `blocking-syscall`: tasks read from pipes inside `blocking(...)`; a writer thread outside the
//! runtime writes a byte to each pipe every 2 ms. Each read hands the M's P off to another M,
//! which keeps running the CPU-bound tasks meanwhile; when the read returns, the M needs a P back.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use super::{Config, Measured, Stop, cfs, stopped, sum, timed};
use crate::{blocking, spawn, yield_now};

/// How often the writer feeds every pipe.
const FEED_EVERY: Duration = Duration::from_millis(2);

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    timed(cfg, move |stop| async move {
        let cpu = spawn(cfs::yielders(2 * cfg.procs, 20_000, stop.clone()));
        let reads = readers(cfg.scaled(2 * cfg.procs), stop).await;
        cpu.await;
        reads
    })
    .await
}

/// `n` tasks doing blocking one-byte pipe reads until `stop`; returns the reads done.
pub(super) async fn readers(n: usize, stop: Stop) -> io::Result<u64> {
    let mut pipes = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let (r, w) = io::pipe()?;
        pipes.push(r);
        writers.push(w);
    }
    let writer_stop: Stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let writer_stop = writer_stop.clone();
        thread::Builder::new().name("refrt-pipe-writer".into()).spawn(move || feed(writers, &writer_stop))?
    };
    let handles = pipes.into_iter().map(|r| spawn(read_loop(r, stop.clone()))).collect();
    let reads = sum(handles).await;
    // The readers are done; the writer may stop (it kept feeding until their last read).
    writer_stop.store(true, Ordering::Relaxed);
    blocking(|| writer.join()).map_err(|_| io::Error::other("the pipe writer thread panicked"))?;
    Ok(reads)
}

async fn read_loop(mut pipe: PipeReader, stop: Stop) -> u64 {
    let mut reads = 0;
    let mut byte = [0u8; 1];
    loop {
        match blocking(|| pipe.read(&mut byte)) {
            Ok(0) | Err(_) => break,
            Ok(_) => reads += 1,
        }
        if stopped(&stop) {
            break;
        }
        // Without preemption a task that never awaits keeps its M (and the P it got back)
        // forever; Go's sysmon would preempt it, here it yields.
        yield_now().await;
    }
    reads
}

fn feed(mut writers: Vec<PipeWriter>, stop: &Stop) {
    while !stopped(stop) {
        thread::sleep(FEED_EVERY);
        for w in &mut writers {
            if w.write_all(&[1]).is_err() {
                return;
            }
        }
    }
}
