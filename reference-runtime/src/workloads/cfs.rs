//! `cfs-contention`: more runnable threads than CPUs. Plain OS threads outside the runtime spin
//! pinned to the CPUs the Ms run on, while tasks do CPU work in small slices and yield between
//! them. CFS preempts the Ms in the middle of a task: the runtime counts the task as running
//! while its thread waits in the kernel's run queue.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use super::{Config, Measured, Stop, cpu_work, stopped, sum, timed};
use crate::{allowed_cpus, blocking, pin_current_thread, spawn, yield_now};

/// One slice of work between yields (~20 µs).
const SLICE: u32 = 20_000;

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    let hog_stop: Stop = Arc::new(AtomicBool::new(false));
    let hogs = start_hogs(cfg.scale as usize, &hog_stop)?;
    let measured =
        timed(cfg, move |stop| async move { Ok(yielders(4 * cfg.procs, SLICE, stop).await) }).await;
    hog_stop.store(true, Ordering::Relaxed);
    stop_hogs(hogs);
    measured
}

/// Starts `n` CPU hogs, the first pinned to the first CPU the process may use, the next to the
/// next one, and so on.
pub(super) fn start_hogs(n: usize, stop: &Stop) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let cpus = allowed_cpus();
    (0..n)
        .map(|i| {
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            let stop = stop.clone();
            thread::Builder::new().name(format!("refrt-hog{i}")).spawn(move || {
                if let Some(cpu) = cpu {
                    // Unpinned, the hog still competes with the Ms; not worth failing over.
                    let _ = pin_current_thread(cpu);
                }
                while !stopped(&stop) {
                    std::hint::black_box(cpu_work(10_000));
                }
            })
        })
        .collect()
}

/// Joins the hogs (their flag must be set) inside a blocking section: joining blocks the M.
pub(super) fn stop_hogs(hogs: Vec<thread::JoinHandle<()>>) {
    blocking(|| {
        for h in hogs {
            let _ = h.join();
        }
    });
}

/// `n` tasks doing `slice`-sized CPU work with a yield after each slice, until `stop`; returns
/// the slices done.
pub(super) async fn yielders(n: usize, slice: u32, stop: Stop) -> u64 {
    let handles = (0..n)
        .map(|_| {
            let stop = stop.clone();
            spawn(async move {
                let mut slices = 0;
                loop {
                    std::hint::black_box(cpu_work(slice));
                    slices += 1;
                    yield_now().await;
                    if stopped(&stop) {
                        break;
                    }
                }
                slices
            })
        })
        .collect();
    sum(handles).await
}
