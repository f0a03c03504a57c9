//! Probe points (USDT, provider `refrt`) and the ground-truth log.
//!
//! Each probe is defined once, by the `probes!` table below, as a function that fires the SDT
//! probe and, when a ground-truth log is open, writes the same event with the same arguments to
//! it. Nothing else in the crate fires a probe, so the two cannot drift apart.
//!
//! Arguments are integers (u64; the probe passes them as isize, so [`NONE`] reads as -1). Task
//! ids are per-runtime counters starting at 1 (0 is "no task"); M and P ids start at 0.
//!
//! A log line is `<ts_ns> <tid> <probe_name> <arg1> <arg2> ...`: decimal, space-separated,
//! `ts_ns` from `clock_gettime(CLOCK_MONOTONIC)` taken on the firing thread immediately before
//! the probe fires, `tid` the kernel thread id of that thread. The lines of one thread are in the
//! order that thread fired them; the file as a whole is grouped by thread, not sorted by time.
//!
//! Every task's events read `task_spawn`, `task_run`, (`task_park`, `task_ready`, `task_run`)*,
//! `task_exit` in timestamp order, and a task already runnable or running is never reported
//! ready twice. A task woken while it is still being polled (a yield is the simplest case) is
//! reported by its M right after its `task_park`: `task_ready` on the M's thread, with the waker
//! task and source of that wake-up. `netpoll_block` fires under the poll descriptor's lock while
//! the task registers, so it always precedes the `netpoll_ready` that answers it.
//!
//! Each probe name has two probe sites in a binary: one on the path without a log and one on the
//! path with it (so that the untraced path costs exactly one predictable branch and the logged
//! timestamp is taken right before the probe). A USDT consumer attaches to every site of a name,
//! as `bpftrace` does.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::lock;

/// "None" for a task-less fd argument, and "the global queue" (or no P) for a P argument.
pub const NONE: u64 = u64::MAX;

/// The `reason` argument of `task_park`.
pub mod park_reason {
    /// Waiting for fd readiness in the netpoller.
    pub const NETPOLL: u64 = 1;
    /// Waiting for a timer.
    pub const TIMER: u64 = 2;
    /// Waiting on a channel.
    pub const CHANNEL: u64 = 3;
    /// `yield_now`.
    pub const YIELD: u64 = 4;
    /// Anything else (a join handle, a foreign future).
    pub const OTHER: u64 = 5;
}

/// The `source` argument of `task_ready`.
pub mod ready_source {
    /// A task (the `waker_task` argument).
    pub const TASK: u64 = 1;
    /// The netpoller.
    pub const NETPOLLER: u64 = 2;
    /// A timer.
    pub const TIMER: u64 = 3;
    /// Anything else: a thread outside the runtime.
    pub const OTHER: u64 = 4;
}

/// The `interest` argument of `netpoll_block`.
pub mod interest {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
}

/// A probe's name and its arguments, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeDef {
    pub name: &'static str,
    pub args: &'static [&'static str],
}

macro_rules! probes {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident),+); )*) => {
        $(
            $(#[$doc])*
            #[inline(never)]
            pub(crate) fn $name(log: Option<&GroundTruth>, $($arg: u64),+) {
                match log {
                    None => probe::probe!(refrt, $name, $($arg),+),
                    Some(log) => {
                        let ts = now_ns();
                        probe::probe!(refrt, $name, $($arg),+);
                        log.record(ts, stringify!($name), &[$($arg),+]);
                    }
                }
            }
        )*

        /// Every probe, in table order, with its argument names.
        pub const PROBES: &[ProbeDef] = &[
            $(ProbeDef { name: stringify!($name), args: &[$(stringify!($arg)),+] }),*
        ];
    };
}

probes! {
    /// The spawning thread, right after the task is queued (`p`: its queue, [`NONE`] = global).
    fn task_spawn(task, parent_task, p);
    /// The M thread, right before it polls the task; `local_queue_len` of `p` after taking it.
    fn task_run(task, m, p, local_queue_len);
    /// The M thread, right after a poll returned Pending ([`park_reason`]; `fd` or [`NONE`]).
    fn task_park(task, reason, fd);
    /// The thread that made the task runnable, right after queuing it ([`ready_source`]).
    fn task_ready(task, waker_task, source, p);
    /// The M thread, when the task's future completed.
    fn task_exit(task, m, p);
    /// The thief M, after moving `count` tasks from `victim_p`'s queue.
    fn steal(thief_p, victim_p, count, thief_m);
    /// An M thread right before it sleeps for lack of work.
    fn m_park(m);
    /// That M thread right after it wakes up.
    fn m_unpark(m);
    /// The M thread when a task starts waiting for an fd ([`interest`]), before its `task_park`.
    fn netpoll_block(task, fd, interest);
    /// The thread that ran `epoll_wait`, right before the matching `task_ready` (source 2; from
    /// the task's M instead if the task was still being polled).
    fn netpoll_ready(task, fd, events);
    /// The M thread before a blocking closure; `p` is the P it hands off.
    fn block_enter(task, m, p);
    /// The M thread once it holds a P again after the closure (`p`: the P acquired; [`NONE`]
    /// only when the runtime shut down meanwhile).
    fn block_exit(task, m, p);
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds: the clock of the log and of the timers.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux, so
    // the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
    static BUFFER: RefCell<ThreadBuffer> = const { RefCell::new(ThreadBuffer { owner: None, data: Vec::new() }) };
}

/// The kernel thread id of the calling thread (cached).
pub fn gettid() -> u64 {
    let fetch = || {
        // SAFETY: gettid(2) has no arguments and cannot fail.
        unsafe { libc::gettid() as u64 }
    };
    TID.try_with(|t| {
        if t.get() == 0 {
            t.set(fetch());
        }
        t.get()
    })
    .unwrap_or_else(|_| fetch())
}

/// A thread's own log buffer is flushed to the file once it holds this much.
const FLUSH_AT: usize = 1 << 20;

/// The ground-truth log: one file, written from per-thread buffers.
pub(crate) struct GroundTruth {
    path: PathBuf,
    out: Mutex<Output>,
}

struct Output {
    file: File,
    /// Lines of threads without their own buffer (threads outside the runtime).
    shared: Vec<u8>,
    /// The first write error; reported when the log is finished.
    error: Option<io::Error>,
}

impl Output {
    fn write(&mut self, data: &[u8]) {
        if self.error.is_none()
            && let Err(e) = self.file.write_all(data)
        {
            self.error = Some(e);
        }
    }
}

/// The log buffer of one thread; appended without locks. Ms and the thread inside `block_on`
/// own one; any other thread writes its (rare) lines into the log's shared buffer.
struct ThreadBuffer {
    owner: Option<Arc<GroundTruth>>,
    data: Vec<u8>,
}

impl ThreadBuffer {
    fn flush(&mut self) {
        if let Some(owner) = &self.owner
            && !self.data.is_empty()
        {
            lock(&owner.out).write(&self.data);
        }
        self.data.clear();
    }
}

impl Drop for ThreadBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

impl GroundTruth {
    /// Creates (truncates) the log file.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Mutex::new(Output { file, shared: Vec::new(), error: None }),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn record(&self, ts: u64, name: &str, args: &[u64]) {
        let tid = gettid();
        let own = BUFFER
            .try_with(|b| {
                let Ok(mut b) = b.try_borrow_mut() else { return false };
                if !b.owner.as_deref().is_some_and(|o| std::ptr::eq(o, self)) {
                    return false;
                }
                format_line(&mut b.data, ts, tid, name, args);
                true
            })
            .unwrap_or(false);
        if !own {
            let mut out = lock(&self.out);
            format_line(&mut out.shared, ts, tid, name, args);
            if out.shared.len() >= FLUSH_AT {
                let data = std::mem::take(&mut out.shared);
                out.write(&data);
            }
        }
    }

    /// Writes out everything buffered by threads without their own buffer and flushes the file;
    /// returns the first write error since the last call.
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut out = lock(&self.out);
        let data = std::mem::take(&mut out.shared);
        out.write(&data);
        if let Err(e) = out.file.flush() {
            out.error.get_or_insert(e);
        }
        match out.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Gives the calling thread its own buffer for `log` (an M, or the thread inside `block_on`).
pub(crate) fn attach_thread(log: &Arc<GroundTruth>) {
    let _ = BUFFER.try_with(|b| {
        let mut b = b.borrow_mut();
        b.flush();
        b.owner = Some(log.clone());
    });
}

/// Writes the calling thread's buffer to its log and detaches it.
pub(crate) fn detach_thread() {
    let _ = BUFFER.try_with(|b| {
        let mut b = b.borrow_mut();
        b.flush();
        b.owner = None;
    });
}

/// Writes the calling thread's buffer out if it has grown large (called between tasks).
pub(crate) fn flush_if_large() {
    let _ = BUFFER.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && b.data.len() >= FLUSH_AT
        {
            b.flush();
        }
    });
}

fn format_line(out: &mut Vec<u8>, ts: u64, tid: u64, name: &str, args: &[u64]) {
    push_decimal(out, ts);
    out.push(b' ');
    push_decimal(out, tid);
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    for &a in args {
        out.push(b' ');
        push_decimal(out, a);
    }
    out.push(b'\n');
}

fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let mut out = Vec::new();
        format_line(&mut out, 12, 345, "task_ready", &[1, 0, 4, NONE]);
        assert_eq!(out, b"12 345 task_ready 1 0 4 18446744073709551615\n");
        out.clear();
        push_decimal(&mut out, 0);
        assert_eq!(out, b"0");
    }

    #[test]
    fn table_matches_the_contract() {
        let names: Vec<_> = PROBES.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "task_spawn",
                "task_run",
                "task_park",
                "task_ready",
                "task_exit",
                "steal",
                "m_park",
                "m_unpark",
                "netpoll_block",
                "netpoll_ready",
                "block_enter",
                "block_exit"
            ]
        );
        assert!(PROBES.iter().all(|p| !p.args.is_empty() && p.args.len() <= 5));
        assert_eq!(PROBES[3].args, ["task", "waker_task", "source", "p"]);
    }

    #[test]
    fn own_and_shared_buffers_reach_the_file() {
        let path = std::env::temp_dir().join(format!("refrt-probes-{}.log", std::process::id()));
        let log = Arc::new(GroundTruth::create(&path).expect("create log"));
        task_exit(Some(&log), 1, 2, 3); // no own buffer: shared
        attach_thread(&log);
        task_exit(Some(&log), 4, 5, 6);
        let other = {
            let log = log.clone();
            std::thread::spawn(move || m_park(Some(&log), 7))
        };
        other.join().expect("thread");
        detach_thread();
        log.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read log");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().any(|l| l[2..] == ["task_exit", "1", "2", "3"]));
        assert!(lines.iter().any(|l| l[2..] == ["task_exit", "4", "5", "6"]));
        assert!(lines.iter().any(|l| l[2..] == ["m_park", "7"]));
        let me = gettid().to_string();
        assert!(lines.iter().filter(|l| l[1] == me).count() == 2);
    }
}
