//! A small G/M/P work-stealing runtime with an epoll netpoller and timers: sched-trace's built-in
//! demo target and its ground truth.
//!
//! The model is Go's: tasks (G) run on worker threads (M) that must hold a logical processor (P)
//! to run them. Each P has a bounded local run queue, there is one global queue, idle Ms steal
//! half of another P's queue, a bounded number of Ms spin looking for work before they park, and
//! one M blocks in `epoll_wait` when there is nothing to run. [`blocking`] hands the P off like
//! Go's `entersyscallblock`.
//!
//! Every scheduling event fires a USDT probe (provider `refrt`, see [`probes`]) and, when
//! `REFRUNTIME_GROUND_TRUTH` names a file (or [`Builder::ground_truth`] does), is also written
//! to that file: the log sched-trace's tests compare the kernel-side recording against.
//!
//! ```
//! use reference_runtime::{Runtime, channel, spawn};
//!
//! let rt = Runtime::builder().procs(2).build().expect("runtime");
//! let sum = rt.block_on(async {
//!     let (tx, mut rx) = channel(1);
//!     let producer = spawn(async move {
//!         for i in 0..10u64 {
//!             tx.send(i).await.expect("receiver alive");
//!         }
//!     });
//!     let mut sum = 0;
//!     while let Some(v) = rx.recv().await {
//!         sum += v;
//!     }
//!     producer.await;
//!     sum
//! });
//! assert_eq!(sum, 45);
//! ```

mod blocking;
mod chan;
mod cpus;
mod net;
mod netpoll;
pub mod probes;
mod queue;
mod runtime;
mod sched;
mod stats;
mod task;
mod timer;
pub mod workloads;

use std::sync::{Mutex, MutexGuard};

pub use blocking::blocking;
pub use chan::{Receiver, RecvFuture, SendError, SendFuture, Sender, channel};
pub use cpus::{allowed_cpus, available_procs, pin_current_thread};
pub use net::{TcpListener, TcpStream};
pub use runtime::{Builder, Error, GROUND_TRUTH_ENV, PROCS_ENV, Runtime, default_procs};
pub use sched::spawn;
pub use stats::{MStats, PStats, Stats};
pub use task::{JoinHandle, YieldNow, yield_now};
pub use timer::{Sleep, sleep};

/// Locks a mutex of the runtime. A poisoned lock means a panic inside the runtime's own critical
/// sections (task panics are caught before they reach one); the data is still consistent there,
/// so carry on rather than cascade the panic into every worker.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
