//! A CPU burner for the cgroup tests: moves itself into a cgroup, then spins `--threads`
//! threads (optionally pinned to one CPU) for `--seconds`, and prints what the kernel counted
//! for each thread (`/proc/thread-self/schedstat`) as JSON lines on stdout.
//!
//! usage: sched-trace-burn --threads N --seconds S [--cpu C] [--cgroup DIR] [--name NAME]

mod workload;

use std::{
    io::Write,
    time::{Duration, Instant},
};

use workload::{monotonic_ns, name_thread, pin_to, schedstat};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut threads, mut seconds, mut cpu, mut cgroup, mut name) =
        (1usize, 1.0f64, None, None, "burn".to_string());
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage("--threads takes a number")),
            "--seconds" => seconds = value().parse().unwrap_or_else(|_| usage("--seconds takes a number")),
            "--cpu" => cpu = Some(value().parse::<usize>().unwrap_or_else(|_| usage("--cpu takes a number"))),
            "--cgroup" => cgroup = Some(value()),
            "--name" => name = value(),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Some(dir) = &cgroup {
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            eprintln!("sched-trace-burn: cannot join {}: {e}", procs.display());
            std::process::exit(1);
        }
    }
    let run_for = Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let name = format!("{name}-{i}");
            std::thread::spawn(move || {
                let tid = name_thread(&name);
                if let Some(c) = cpu {
                    pin_to(c);
                }
                let start = monotonic_ns();
                let until = Instant::now() + run_for;
                let mut x = 0u64;
                while Instant::now() < until {
                    for _ in 0..1000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
                let (exec_ns, run_delay_ns) = schedstat();
                format!(
                    "{{\"name\":\"{name}\",\"tid\":{tid},\"sum_exec_ns\":{exec_ns},\"run_delay_ns\":{run_delay_ns},\
                     \"start_ns\":{start},\"end_ns\":{}}}",
                    monotonic_ns()
                )
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for h in handles {
        match h.join() {
            Ok(line) => {
                let _ = writeln!(out, "{line}");
            }
            Err(_) => std::process::exit(1),
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "sched-trace-burn: {why}\nusage: sched-trace-burn --threads N --seconds S [--cpu C] [--cgroup DIR] [--name NAME]"
    );
    std::process::exit(2);
}
