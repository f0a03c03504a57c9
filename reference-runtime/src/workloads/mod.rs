//! The workloads `refrt` runs. Each reproduces a scheduling pathology people ask about, runs for
//! a set wall-clock duration, and counts its operations (round trips, requests, slices, reads).

mod blocking_syscall;
mod cfs;
mod imbalance;
mod mixed;
mod netpoll;
mod pingpong;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, JoinHandle, Runtime, Stats, sleep, spawn};

/// Every workload, in the order `refrt list` prints them.
pub const NAMES: &[&str] =
    &["pingpong", "netpoll", "imbalance", "cfs-contention", "blocking-syscall", "mixed"];

/// How to run a workload.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ps; None: `REFRUNTIME_PROCS` or the CPUs available.
    pub procs: Option<usize>,
    /// Multiplies the concurrency (pairs, connections, batch sizes, threads); at least 1.
    pub scale: u32,
    /// How long the workload runs.
    pub duration: Duration,
    /// Ground-truth log; None: `REFRUNTIME_GROUND_TRUTH` decides.
    pub ground_truth: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self { procs: None, scale: 1, duration: Duration::from_secs(1), ground_truth: None }
    }
}

/// What a workload run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub workload: &'static str,
    pub procs: usize,
    pub ops: u64,
    pub seconds: f64,
    pub stats: Stats,
}

impl Outcome {
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }

    /// The final line `refrt` prints.
    pub fn json_line(&self) -> String {
        json_line(self.workload, self.procs, self.ops, self.seconds)
    }
}

/// `{"workload":…,"ops":…,"seconds":…,"ops_per_sec":…,"procs":…}`, the line `refrt` and the tokio
/// peer print last.
pub fn json_line(workload: &str, procs: usize, ops: u64, seconds: f64) -> String {
    let rate = if seconds > 0.0 { ops as f64 / seconds } else { 0.0 };
    let name: String =
        workload.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    format!(
        r#"{{"workload":"{name}","ops":{ops},"seconds":{seconds:.3},"ops_per_sec":{rate:.1},"procs":{procs}}}"#
    )
}

#[derive(Debug)]
pub enum WorkloadError {
    /// No workload has that name.
    Unknown(String),
    Runtime(Error),
    /// The workload's own I/O (sockets, pipes, threads) failed.
    Io(io::Error),
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadError::Unknown(n) => write!(f, "unknown workload {n:?} (known: {})", NAMES.join(", ")),
            WorkloadError::Runtime(e) => write!(f, "{e}"),
            WorkloadError::Io(e) => write!(f, "workload I/O failed: {e}"),
        }
    }
}

impl std::error::Error for WorkloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WorkloadError::Unknown(_) => None,
            WorkloadError::Runtime(e) => Some(e),
            WorkloadError::Io(e) => Some(e),
        }
    }
}

impl From<Error> for WorkloadError {
    fn from(e: Error) -> Self {
        WorkloadError::Runtime(e)
    }
}

/// Builds a runtime for `opts` and runs the workload `name` on it.
pub fn run(name: &str, opts: &Options) -> Result<Outcome, WorkloadError> {
    let mut builder = Runtime::builder();
    if let Some(n) = opts.procs {
        builder = builder.procs(n);
    }
    if let Some(path) = &opts.ground_truth {
        builder = builder.ground_truth(path);
    }
    run_on(&builder.build()?, name, opts)
}

/// Runs the workload `name` as one session of `rt` (`opts.procs` and `opts.ground_truth` are
/// the runtime's business here and are ignored).
pub fn run_on(rt: &Runtime, name: &str, opts: &Options) -> Result<Outcome, WorkloadError> {
    let Some(&workload) = NAMES.iter().find(|&&n| n == name) else {
        return Err(WorkloadError::Unknown(name.to_string()));
    };
    let cfg = Config { scale: opts.scale.max(1), duration: opts.duration, procs: rt.procs() };
    let (result, stats) = match workload {
        "pingpong" => rt.run(pingpong::main(cfg))?,
        "netpoll" => rt.run(netpoll::main(cfg))?,
        "imbalance" => rt.run(imbalance::main(cfg))?,
        "cfs-contention" => rt.run(cfs::main(cfg))?,
        "blocking-syscall" => rt.run(blocking_syscall::main(cfg))?,
        _ => rt.run(mixed::main(cfg))?,
    };
    let measured = result.map_err(WorkloadError::Io)?;
    Ok(Outcome { workload, procs: rt.procs(), ops: measured.ops, seconds: measured.seconds, stats })
}

/// What the parts of a workload see of the options.
#[derive(Clone, Copy, Debug)]
struct Config {
    scale: u32,
    duration: Duration,
    procs: usize,
}

impl Config {
    fn scaled(&self, n: usize) -> usize {
        n * self.scale as usize
    }
}

struct Measured {
    ops: u64,
    seconds: f64,
}

/// Set when a workload's time is up; its tasks check it after each operation (so every part of
/// a workload does its thing at least once, however loaded the machine).
type Stop = Arc<AtomicBool>;

fn stopped(stop: &Stop) -> bool {
    stop.load(Ordering::Relaxed)
}

/// Runs `body` as its own task for the configured duration (the root task sleeps on a timer
/// meanwhile), then raises the stop flag and waits for the body to wind down.
async fn timed<F, Fut>(cfg: Config, body: F) -> io::Result<Measured>
where
    F: FnOnce(Stop) -> Fut,
    Fut: Future<Output = io::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let stop: Stop = Arc::new(AtomicBool::new(false));
    let work = spawn(body(stop.clone()));
    sleep(cfg.duration).await;
    stop.store(true, Ordering::Relaxed);
    let ops = work.await?;
    Ok(Measured { ops, seconds: start.elapsed().as_secs_f64() })
}

async fn sum(handles: Vec<JoinHandle<u64>>) -> u64 {
    let mut total = 0;
    for h in handles {
        total += h.await;
    }
    total
}

/// CPU-bound work: `iters` rounds of xorshift (about a nanosecond each).
fn cpu_work(iters: u32) -> u64 {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = std::hint::black_box(x);
    }
    x
}
