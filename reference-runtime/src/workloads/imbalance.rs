//! `imbalance`: one task spawns a large batch of CPU-bound tasks, all onto its own P's local
//! queue; the other Ps start out idle and must steal (half a queue at a time) until the queues
//! converge. The `steal` probes and the per-P counters (tasks run, stolen, longest queue) show it.

use std::io;

use super::{Config, Measured, Stop, cpu_work, stopped, timed};
use crate::spawn;

/// Work of one task (~50 µs).
const TASK_WORK: u32 = 50_000;

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    timed(cfg, move |stop| async move { Ok(spawner(cfg.scaled(192), TASK_WORK, stop).await) }).await
}

/// Spawns batches of `batch` CPU-bound tasks and waits for each batch, until `stop`; returns
/// the tasks completed.
pub(super) async fn spawner(batch: usize, work: u32, stop: Stop) -> u64 {
    let mut done = 0;
    loop {
        let handles: Vec<_> = (0..batch).map(|_| spawn(async move { cpu_work(work) })).collect();
        for h in handles {
            std::hint::black_box(h.await);
            done += 1;
        }
        if stopped(&stop) {
            break;
        }
    }
    done
}
