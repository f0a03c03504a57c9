//! `mixed`: a bit of everything at once: ping-pong pairs, an echo server with clients, a spawner
//! of CPU-bound batches, yielding CPU slices next to a hog thread, blocking pipe reads, and
//! tasks sleeping on timers.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    Config, Measured, Stop, blocking_syscall, cfs, imbalance, netpoll, pingpong, stopped, sum, timed,
};
use crate::{sleep, spawn};

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    let hog_stop: Stop = Arc::new(AtomicBool::new(false));
    let hogs = cfs::start_hogs(1, &hog_stop)?;
    let measured = timed(cfg, move |stop| async move {
        let pairs = spawn(pingpong::pairs(cfg.scaled(2), stop.clone()));
        let echo = spawn(netpoll::echo(cfg.scaled(4), stop.clone()));
        let batches = spawn(imbalance::spawner(cfg.scaled(64), 50_000, stop.clone()));
        let slices = spawn(cfs::yielders(cfg.scaled(cfg.procs), 20_000, stop.clone()));
        let reads = spawn(blocking_syscall::readers(cfg.scaled(cfg.procs), stop.clone()));
        let naps = spawn(sleepers(cfg.scaled(4), stop));
        let mut ops = pairs.await + batches.await + slices.await + naps.await;
        ops += echo.await?;
        ops += reads.await?;
        Ok(ops)
    })
    .await;
    hog_stop.store(true, Ordering::Relaxed);
    cfs::stop_hogs(hogs);
    measured
}

/// `n` tasks sleeping 1 ms at a time until `stop`; returns the sleeps.
async fn sleepers(n: usize, stop: Stop) -> u64 {
    let handles = (0..n)
        .map(|_| {
            let stop = stop.clone();
            spawn(async move {
                let mut naps = 0;
                loop {
                    sleep(Duration::from_millis(1)).await;
                    naps += 1;
                    if stopped(&stop) {
                        break;
                    }
                }
                naps
            })
        })
        .collect();
    sum(handles).await
}
