//! What the test workloads (`sched-trace-testload`, `sched-trace-stackload`) share: thin,
//! panicking wrappers of the system calls they make. A workload that cannot make its calls
//! cannot be ground truth, so it stops loudly.

// Each workload uses a part of this.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub fn pin_to(cpu: usize) {
    // SAFETY: sched_setaffinity on the calling thread with a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn write_fd(fd: &OwnedFd, buf: &[u8]) {
    // SAFETY: writing from a live buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    assert_eq!(n as usize, buf.len());
}

pub fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    // SAFETY: reading into a live buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0);
    n as usize
}

/// Names the calling thread (`prctl(PR_SET_NAME)`) and returns its tid.
pub fn name_thread(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The calling thread's CPU time so far.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's `(time on CPU, time waiting in a run queue)` by the kernel's count
/// (`/proc/thread-self/schedstat`).
pub fn schedstat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat is readable");
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().expect("schedstat holds numbers"));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}
