//! A thread-level workload whose scheduling is known, for checking sched-trace against ground
//! truth: timed sleeps, epoll waits (timeouts and readiness), a pipe ping-pong between two
//! threads, CPU hogs contending for one CPU, and a forked child process.
//!
//! Every thread (and the child) names itself (`prctl(PR_SET_NAME)`), does its part, then parks
//! in a `read` of a release pipe. Once /proc shows every one of them asleep in that `read`, the
//! main thread reads each one's kernel counters (`/proc/PID/task/TID/{status,schedstat,sched}`)
//! and writes them, with what each thread measured itself, as JSON lines to the file named by
//! `--ground-truth` (one object per thread). Then it releases them to exit.
//!
//! usage: sched-trace-testload --ground-truth FILE [--scale N]

mod workload;

use std::{
    fs,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use workload::{monotonic_ns, name_thread, pin_to, pipe, read_fd, write_fd};

#[derive(Default, Clone)]
struct Measured {
    name: String,
    tid: u32,
    /// Wall time spent in nanosleep calls.
    slept_ns: u64,
    /// Wall time spent in epoll_wait calls.
    epoll_ns: u64,
    sleeps: u64,
    epoll_waits: u64,
    round_trips: u64,
    /// CLOCK_MONOTONIC when the thread started and finished its part.
    work_start_ns: u64,
    work_end_ns: u64,
}

/// A thread's part of the workload: (scale, its measurements).
type Work = fn(u64, &mut Measured);

fn main() {
    let mut args = std::env::args().skip(1);
    let mut ground_truth = None;
    let mut scale = 1u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ground-truth" => ground_truth = args.next(),
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            other => {
                eprintln!("sched-trace-testload: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let Some(ground_truth) = ground_truth else {
        eprintln!("usage: sched-trace-testload --ground-truth FILE [--scale N]");
        std::process::exit(2);
    };

    let steal_at_start = machine_steal_ns();
    let (release_r, release_w) = pipe();
    let release_r = Arc::new(release_r);
    let child = fork_child(scale, &release_r);

    let measured: Arc<Mutex<Vec<Measured>>> = Arc::default();
    let workers: Vec<(&str, Work)> =
        vec![("tl-sleeper", sleeper), ("tl-epoller", epoller), ("tl-hog-0", hog), ("tl-hog-1", hog)];
    let mut handles = Vec::new();
    for (name, work) in workers {
        let (measured, release) = (measured.clone(), release_r.clone());
        handles.push(thread::spawn(move || {
            let mut m = start(name);
            work(scale, &mut m);
            m.work_end_ns = monotonic_ns();
            measured.lock().unwrap().push(m);
            park(&release);
        }));
    }
    // The ping-pong pair: each wakes the other through a pipe, 200 round trips, from two CPUs
    // (so that every read blocks), once the hogs have left CPU 0.
    let (to_pong_r, to_pong_w) = pipe();
    let (to_ping_r, to_ping_w) = pipe();
    for (name, read, write, ping) in
        [("tl-ping", to_ping_r, to_pong_w, true), ("tl-pong", to_pong_r, to_ping_w, false)]
    {
        let (measured, release) = (measured.clone(), release_r.clone());
        handles.push(thread::spawn(move || {
            thread::sleep(Duration::from_millis(350 * scale));
            let mut m = start(name);
            pin_to(if ping { 1 } else { 0 });
            let mut byte = [0u8; 1];
            for i in 0..200 * scale {
                // A USDT probe per round trip: sched-trace attaches it when it traces this binary.
                probe::probe!(testload, round_trip, i as isize, if ping { 1 } else { 2 });
                if ping {
                    write_fd(&write, &byte);
                    read_fd(&read, &mut byte);
                } else {
                    read_fd(&read, &mut byte);
                    write_fd(&write, &byte);
                }
                m.round_trips += 1;
            }
            m.work_end_ns = monotonic_ns();
            measured.lock().unwrap().push(m);
            park(&release);
        }));
    }

    // Wait until every thread (and the child) sleeps in its release `read`: from then on their
    // counters do not move.
    let me = std::process::id();
    let mut parked: Vec<(u32, u32)> = loop {
        let ms = measured.lock().unwrap();
        if ms.len() == 6 {
            break ms.iter().map(|m| (me, m.tid)).collect();
        }
        drop(ms);
        thread::sleep(Duration::from_millis(5));
    };
    if let Some((pid, _)) = &child {
        parked.push((*pid as u32, *pid as u32));
    }
    for &(pid, tid) in &parked {
        while !asleep_in_read(pid, tid) {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let mut out = fs::File::create(&ground_truth).expect("ground-truth file can be created");
    let snapshot_ns = monotonic_ns();
    let steal = machine_steal_ns().saturating_sub(steal_at_start);
    for m in measured.lock().unwrap().iter() {
        writeln!(out, "{}", snapshot(me, m, snapshot_ns, steal)).expect("write ground truth");
    }
    if let Some((pid, m)) = &child {
        writeln!(out, "{}", snapshot(*pid as u32, m, snapshot_ns, steal)).expect("write ground truth");
    }
    drop(out);
    write_fd(&release_w, &vec![0u8; parked.len()]);
    if let Some((pid, _)) = child {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    for h in handles {
        h.join().expect("worker finished");
    }
}

fn start(name: &str) -> Measured {
    let tid = name_thread(name);
    Measured { name: name.into(), tid, work_start_ns: monotonic_ns(), ..Default::default() }
}

/// 40 sleeps of 5 ms on CPU 0, beside the two hogs: each wake-up waits for a CPU.
fn sleeper(scale: u64, m: &mut Measured) {
    pin_to(0);
    for _ in 0..40 * scale {
        let t = Instant::now();
        thread::sleep(Duration::from_millis(5));
        m.slept_ns += t.elapsed().as_nanos() as u64;
        m.sleeps += 1;
    }
}

/// 30 epoll polls with a zero timeout (not waits: they are not recorded), 30 epoll waits that
/// time out after 4 ms (10 each through epoll_wait, epoll_pwait and epoll_pwait2), then 20
/// epoll_wait calls that a pipe makes ready.
fn epoller(scale: u64, m: &mut Measured) {
    pin_to(1);
    // SAFETY: plain epoll calls on fds owned here.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        let (r, w) = pipe();
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev), 0);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let four_ms = libc::timespec { tv_sec: 0, tv_nsec: 4_000_000 };
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        for i in 0..30 {
            match i % 3 {
                0 => libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 0),
                1 => libc::epoll_pwait(ep, evs.as_mut_ptr(), 4, 0, std::ptr::null()),
                _ => libc::syscall(libc::SYS_epoll_pwait2, ep, evs.as_mut_ptr(), 4, &zero, 0usize, 8usize)
                    as i32,
            };
        }
        for i in 0..30 * scale {
            let t = Instant::now();
            match i % 3 {
                0 => libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 4),
                1 => libc::epoll_pwait(ep, evs.as_mut_ptr(), 4, 4, std::ptr::null()),
                _ => libc::syscall(libc::SYS_epoll_pwait2, ep, evs.as_mut_ptr(), 4, &four_ms, 0usize, 8usize)
                    as i32,
            };
            m.epoll_ns += t.elapsed().as_nanos() as u64;
            m.epoll_waits += 1;
        }
        let writer = thread::spawn(move || {
            for _ in 0..20 * scale {
                thread::sleep(Duration::from_millis(3));
                write_fd(&w, &[1]);
            }
        });
        let mut byte = [0u8; 1];
        for _ in 0..20 * scale {
            let t = Instant::now();
            libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1);
            m.epoll_ns += t.elapsed().as_nanos() as u64;
            m.epoll_waits += 1;
            read_fd(&r, &mut byte);
        }
        writer.join().expect("writer finished");
        libc::close(ep);
    }
}

/// Spins on CPU 0 for 300 ms of wall time, next to the other hogs.
fn hog(scale: u64, _m: &mut Measured) {
    pin_to(0);
    let end = Instant::now() + Duration::from_millis(300 * scale);
    let mut x = 0u64;
    while Instant::now() < end {
        for i in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// Forks a child process that sleeps 50 × 20 ms, sends what it measured through a pipe, and
/// parks on `release` like the threads. Returns its pid and measurements.
fn fork_child(scale: u64, release: &OwnedFd) -> Option<(i32, Measured)> {
    let (r, w) = pipe();
    // SAFETY: forked before any other thread exists; the child only sleeps, writes to a pipe,
    // reads the release pipe and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(r);
        let mut m = start("tl-child");
        for _ in 0..50 * scale {
            let t = Instant::now();
            thread::sleep(Duration::from_millis(20));
            m.slept_ns += t.elapsed().as_nanos() as u64;
            m.sleeps += 1;
        }
        m.work_end_ns = monotonic_ns();
        let fields = [m.tid as u64, m.slept_ns, m.sleeps, m.work_start_ns, m.work_end_ns];
        let bytes: Vec<u8> = fields.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_fd(&w, &bytes);
        drop(w);
        park(release);
        // SAFETY: leave without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(w);
    let mut buf = [0u8; 40];
    let mut got = 0;
    while got < buf.len() {
        let n = read_fd(&r, &mut buf[got..]);
        if n == 0 {
            return None;
        }
        got += n;
    }
    let f: Vec<u64> = buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    let m = Measured {
        name: "tl-child".into(),
        tid: f[0] as u32,
        slept_ns: f[1],
        sleeps: f[2],
        work_start_ns: f[3],
        work_end_ns: f[4],
        ..Default::default()
    };
    Some((pid, m))
}

/// Blocks in a one-byte `read` of the release pipe.
fn park(release: &OwnedFd) {
    let mut byte = [0u8; 1];
    read_fd(release, &mut byte);
}

/// Whether thread `tid` of `pid` is asleep in read(2) (syscall 0 on x86_64).
fn asleep_in_read(pid: u32, tid: u32) -> bool {
    let dir = format!("/proc/{pid}/task/{tid}");
    let syscall = fs::read_to_string(format!("{dir}/syscall")).unwrap_or_default();
    let stat = fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
    syscall.split_whitespace().next() == Some("0") && state == Some("S")
}

/// Time the hypervisor took from this machine's CPUs, all CPUs together (/proc/stat). The
/// kernel leaves it out of a thread's exec time; a trace's on-CPU time includes it.
fn machine_steal_ns() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let steal_ticks: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    steal_ticks * 1_000_000_000 / hz
}

/// One JSON line: what the kernel counted for the thread, and what it measured itself.
fn snapshot(pid: u32, m: &Measured, snapshot_ns: u64, steal_ns: u64) -> String {
    let dir = format!("/proc/{pid}/task/{}", m.tid);
    let status = fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let schedstat = fs::read_to_string(format!("{dir}/schedstat")).unwrap_or_default();
    let ss: Vec<u64> = schedstat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let sched = fs::read_to_string(format!("{dir}/sched")).unwrap_or_default();
    let migrations: u64 = sched
        .lines()
        .find(|l| l.starts_with("se.nr_migrations"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    format!(
        "{{\"name\":\"{}\",\"pid\":{pid},\"tid\":{},\"nvcsw\":{},\"nivcsw\":{},\"sum_exec_ns\":{},\
         \"run_delay_ns\":{},\"nr_migrations\":{migrations},\"slept_ns\":{},\"sleeps\":{},\
         \"epoll_ns\":{},\"epoll_waits\":{},\"round_trips\":{},\"work_start_ns\":{},\
         \"work_end_ns\":{},\"snapshot_ns\":{snapshot_ns},\"machine_steal_ns\":{steal_ns}}}",
        m.name,
        m.tid,
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
        ss.first().copied().unwrap_or(0),
        ss.get(1).copied().unwrap_or(0),
        m.slept_ns,
        m.sleeps,
        m.epoll_ns,
        m.epoll_waits,
        m.round_trips,
        m.work_start_ns,
        m.work_end_ns,
    )
}
