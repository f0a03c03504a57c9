//! Workloads whose stacks are known, for checking sched-trace's flame graphs against ground
//! truth. Every function that matters is `#[inline(never)]`, the workspace builds with frame
//! pointers, and the blocking calls go through `syscall(2)` (an assembly stub that leaves the
//! frame-pointer chain alone) rather than libc's wrappers (built without frame pointers), so the
//! kernel's frame-pointer walk reaches these functions.
//!
//! - `hot`: one thread, `sl-hot`, alternates `hot_three_parts` (30 ms of CPU) and
//!   `hot_one_part` (10 ms), measured by the thread's own CPU clock.
//! - `offcpu`: `sl-sleeper` sleeps 20 ms ten times in `sleep_in_nanosleep` and waits ten times
//!   for `sl-feeder`, which writes a pipe 30 ms after it is asked, in `wait_on_pipe` (both on
//!   CPU 1); `sl-queued` naps 4 ms in `nap` and burns 2 ms in `burn_a_little`, 50 times, on
//!   CPU 0 beside `sl-hog`, which spins there: each wake-up waits behind the hog.
//!
//! When done it writes one JSON object with what it measured (wall time in each blocking call,
//! CPU time in each hot function, the kernel's run-queue delay of `sl-queued`) to the file named
//! by `--ground-truth`.
//!
//! usage: sched-trace-stackload hot|offcpu --ground-truth FILE [--seconds S]

mod workload;

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use workload::{monotonic_ns, name_thread, pin_to, pipe, read_fd, thread_cpu_ns, write_fd};

const MS: u64 = 1_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let (mut ground_truth, mut seconds) = (None, 3u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ground-truth" => ground_truth = args.next(),
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let Some(ground_truth) = ground_truth else { usage("--ground-truth FILE is required") };
    let truth = match mode.as_str() {
        "hot" => hot(seconds),
        "offcpu" => offcpu(),
        _ => usage("the mode is hot or offcpu"),
    };
    std::fs::write(&ground_truth, format!("{truth}\n")).expect("ground-truth file can be written");
}

fn usage(why: &str) -> ! {
    eprintln!(
        "sched-trace-stackload: {why}\nusage: sched-trace-stackload hot|offcpu --ground-truth FILE [--seconds S]"
    );
    std::process::exit(2);
}

/// Spins until the thread has used `ns` more CPU time. Inlined into its callers, so that the
/// hot functions are the leaves (or their callers, for the clock's system call).
///
/// The inner loop calls nothing, in debug builds too: there `for i in 0..n` calls
/// `Range::next` and `black_box` is a call, and a sample that lands in a callee's prologue
/// (before it pushed its frame pointer) loses the callee's caller in the kernel's frame-pointer
/// walk — which is the hot function itself. An empty `asm!` keeps the loop from being optimised
/// away instead.
#[inline(always)]
fn spin_for(ns: u64) -> u64 {
    let end = thread_cpu_ns() + ns;
    let mut x = 0u64;
    loop {
        let mut i = 0u64;
        while i < 20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            // SAFETY: an empty assembly block that only claims to read and write `x`.
            unsafe { std::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, preserves_flags)) };
            i += 1;
        }
        if thread_cpu_ns() >= end {
            return x;
        }
    }
}

#[inline(never)]
fn hot_three_parts() -> u64 {
    spin_for(30 * MS)
}

#[inline(never)]
fn hot_one_part() -> u64 {
    spin_for(10 * MS)
}

fn hot(seconds: u64) -> String {
    let handle = thread::spawn(move || {
        let tid = name_thread("sl-hot");
        let (mut three, mut one) = (0u64, 0u64);
        let end = monotonic_ns() + seconds * 1000 * MS;
        while monotonic_ns() < end {
            let t = thread_cpu_ns();
            std::hint::black_box(hot_three_parts());
            let u = thread_cpu_ns();
            std::hint::black_box(hot_one_part());
            three += u - t;
            one += thread_cpu_ns() - u;
        }
        format!("{{\"tid\":{tid},\"hot_three_parts_cpu_ns\":{three},\"hot_one_part_cpu_ns\":{one}}}")
    });
    handle.join().expect("sl-hot finished")
}

/// The time spent in one system call, made through `syscall(2)`.
fn timed_syscall(f: impl FnOnce() -> libc::c_long) -> u64 {
    let t = monotonic_ns();
    let r = f();
    assert!(r >= 0, "system call failed: {}", std::io::Error::last_os_error());
    monotonic_ns() - t
}

/// nanosleep(2) for `ns`, inlined into the function that sleeps.
#[inline(always)]
fn nanosleep(ns: u64) -> u64 {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: ns as libc::c_long };
    // SAFETY: nanosleep with a live timespec and no remainder.
    timed_syscall(|| unsafe {
        libc::syscall(libc::SYS_nanosleep, &ts, std::ptr::null_mut::<libc::timespec>())
    })
}

#[inline(never)]
fn sleep_in_nanosleep(ns: u64) -> u64 {
    nanosleep(ns)
}

#[inline(never)]
fn wait_on_pipe(r: &OwnedFd) -> u64 {
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a live buffer.
    timed_syscall(|| unsafe { libc::syscall(libc::SYS_read, r.as_raw_fd(), byte.as_mut_ptr(), 1usize) })
}

#[inline(never)]
fn nap(ns: u64) -> u64 {
    nanosleep(ns)
}

#[inline(never)]
fn burn_a_little() -> u64 {
    spin_for(2 * MS)
}

fn offcpu() -> String {
    let (ask_r, ask_w) = pipe();
    let (data_r, data_w) = pipe();
    let feeder = thread::spawn(move || {
        name_thread("sl-feeder");
        pin_to(1);
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            read_fd(&ask_r, &mut byte);
            sleep_in_nanosleep(30 * MS);
            write_fd(&data_w, &byte);
        }
    });
    let sleeper = thread::spawn(move || {
        let tid = name_thread("sl-sleeper");
        pin_to(1);
        let (mut slept, mut waited) = (0u64, 0u64);
        for _ in 0..10 {
            slept += sleep_in_nanosleep(20 * MS);
            write_fd(&ask_w, &[1]);
            waited += wait_on_pipe(&data_r);
        }
        (tid, slept, waited)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        thread::spawn(move || {
            name_thread("sl-hog");
            pin_to(0);
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..20_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
            }
        })
    };
    let queued = thread::spawn(move || {
        let tid = name_thread("sl-queued");
        pin_to(0);
        let before = workload::schedstat();
        let mut napped = 0u64;
        for _ in 0..50 {
            napped += nap(4 * MS);
            std::hint::black_box(burn_a_little());
        }
        let after = workload::schedstat();
        (tid, napped, after.1 - before.1)
    });
    let (queued_tid, napped, run_delay) = queued.join().expect("sl-queued finished");
    stop.store(true, Ordering::Relaxed);
    hog.join().expect("sl-hog finished");
    let (sleeper_tid, slept, waited) = sleeper.join().expect("sl-sleeper finished");
    feeder.join().expect("sl-feeder finished");
    format!(
        "{{\"sleeper_tid\":{sleeper_tid},\"slept_ns\":{slept},\"pipe_waited_ns\":{waited},\
         \"queued_tid\":{queued_tid},\"napped_ns\":{napped},\"queued_run_delay_ns\":{run_delay}}}"
    )
}
