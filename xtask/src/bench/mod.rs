//! `cargo xtask bench`: measured figures for BENCHMARKS.md, every configuration in one run.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

mod go;
mod stacks;
pub use go::go_overhead;
pub use stacks::{flamegraph_speed, stack_capture_overhead};

/// Ops per second of one run: the `"ops_per_sec"` of the JSON line a workload prints last.
fn ops_per_sec(cmd: &mut Command, what: &str) -> Result<f64> {
    let out = cmd.stderr(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("\"ops_per_sec\""))
        .with_context(|| format!("{what} printed no result line:\n{text}"))?;
    let value = line
        .split("\"ops_per_sec\":")
        .nth(1)
        .and_then(|v| v.trim_start().split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{what}: no ops_per_sec in {line}"))?;
    Ok(value)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The reference runtime's throughput on pingpong and netpoll: untraced (probes compiled in,
/// not attached), next to tokio doing the same work, and under sched-trace with and without its
/// USDT probes attached.
pub fn runtime_throughput(root: &Path, runs: usize, seconds: u32) -> Result<()> {
    let release = root.join("target/release");
    let refrt = release.join("refrt");
    let tokio_peer = release.join("examples/tokio_peer");
    let sched_trace = release.join("sched-trace");
    let trace = std::env::temp_dir().join("sched-trace-bench.trace");
    let secs = seconds.to_string();
    println!(
        "| workload | refrt, probes not attached | tokio (same work) | refrt under sched-trace, kernel probes only | refrt under sched-trace, kernel + USDT probes |"
    );
    println!("|---|---|---|---|---|");
    for workload in ["pingpong", "netpoll"] {
        let measure = |make: &dyn Fn() -> Command, what: &str| -> Result<f64> {
            let v: Result<Vec<f64>> = (0..runs).map(|_| ops_per_sec(&mut make(), what)).collect();
            Ok(median(v?))
        };
        let plain = measure(
            &|| {
                let mut c = Command::new(&refrt);
                c.args([workload, "--duration", &secs]);
                c
            },
            "refrt",
        )?;
        let tokio = measure(
            &|| {
                let mut c = Command::new(&tokio_peer);
                c.args([workload, "--duration", &secs]);
                c
            },
            "tokio_peer",
        )?;
        let traced = |usdt: bool| {
            let mut c = Command::new(&sched_trace);
            c.args(["record", "--quiet", "-o"]).arg(&trace);
            if !usdt {
                c.arg("--no-usdt");
            }
            c.arg("--").arg(&refrt).args([workload, "--duration", &secs]);
            c
        };
        let kernel_only = measure(&|| traced(false), "sched-trace record --no-usdt -- refrt")?;
        let with_usdt = measure(&|| traced(true), "sched-trace record -- refrt")?;
        let cell = |v: f64| format!("{:.0}/s ({:.2}×)", v, plain / v);
        println!(
            "| {workload} (round trips) | {plain:.0}/s | {tokio:.0}/s | {} | {} |",
            cell(kernel_only),
            cell(with_usdt)
        );
    }
    let _ = std::fs::remove_file(&trace);
    println!("\n(median of {runs} runs of {seconds} s each; × = slowdown against the untraced runtime)");
    Ok(())
}

/// `usecs/op` of `perf bench sched pipe`, from its output.
fn usecs_per_op(text: &str) -> Option<f64> {
    text.lines().find(|l| l.contains("usecs/op"))?.split_whitespace().next()?.parse().ok()
}

/// The peers `record_overhead` measures `sched-trace record` against.
#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    None,
    SchedTrace,
    PerfSched,
    Bpftrace,
}

impl Tracer {
    const ALL: [Tracer; 4] = [Tracer::None, Tracer::SchedTrace, Tracer::PerfSched, Tracer::Bpftrace];

    fn label(self) -> &'static str {
        match self {
            Tracer::None => "alone",
            Tracer::SchedTrace => "`sched-trace record` (system-wide)",
            Tracer::PerfSched => "`perf sched record` (system-wide)",
            Tracer::Bpftrace => "bpftrace `runqlat.bt` (system-wide)",
        }
    }
}

/// One run of the workload under one tracer.
struct Sample {
    usecs_per_op: f64,
    /// Trace file bytes and the events in it (sched-trace, perf).
    file: Option<(u64, u64)>,
    /// Events the tracer lost (sched-trace only).
    lost: Option<u64>,
}

/// Spawns a tracer that runs until SIGINT and waits until it says it is attached: a line of its
/// output containing `ready`.
fn start_tracer(cmd: &mut Command, what: &str, ready: &str, from_stderr: bool) -> Result<Child> {
    if from_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pipe: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr is piped")?)
    } else {
        Box::new(child.stdout.take().context("stdout is piped")?)
    };
    let mut lines = BufReader::new(pipe).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(ready) => break,
            Some(Ok(line)) => seen.push(line),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} exited before it was attached:\n{}", seen.join("\n"));
            }
        }
    }
    // Keep reading its output so that it never blocks on a full pipe; hand back the rest.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(rest);
    });
    TRACER_OUTPUT.with(|o| *o.borrow_mut() = Some(rx));
    Ok(child)
}

thread_local! {
    /// The rest of the output of the tracer started last.
    static TRACER_OUTPUT: std::cell::RefCell<Option<std::sync::mpsc::Receiver<Vec<String>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Stops a tracer started by `start_tracer` with SIGINT; returns the rest of its output.
fn stop_tracer(mut child: Child, what: &str) -> Result<Vec<String>> {
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    if !sent.is_ok_and(|s| s.success()) {
        let _ = child.kill();
    }
    let status = child.wait().with_context(|| format!("waiting for {what}"))?;
    let rest =
        TRACER_OUTPUT.with(|o| o.borrow_mut().take()).and_then(|rx| rx.recv().ok()).unwrap_or_default();
    if !status.success() && status.code() != Some(130) {
        bail!("{what} failed ({status}):\n{}", rest.join("\n"));
    }
    Ok(rest)
}

/// A number in text such as `1,234,567` (sched-trace's summaries group digits).
fn grouped_number(s: &str) -> Option<u64> {
    s.replace(',', "").parse().ok()
}

/// The event count of `sched-trace record`'s summary ("sched-trace: 1,234 events in ...").
fn sched_trace_events(output: &str) -> Result<u64> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("sched-trace: ")?.split(" events in ").next().and_then(grouped_number))
        .with_context(|| format!("sched-trace printed no summary:\n{output}"))
}

/// The sample count of `perf record`'s last words ("[ perf record: Captured and wrote 54.7 MB
/// FILE (512345 samples) ]").
fn perf_samples(output: &str) -> Result<u64> {
    output
        .lines()
        .find(|l| l.contains("Captured and wrote"))
        .and_then(|l| l.rsplit_once('(')?.1.split_whitespace().next().and_then(grouped_number))
        .with_context(|| format!("perf printed no sample count:\n{output}"))
}

/// What recording a context-switch storm costs, next to the peers the foundation issue names:
/// `perf bench sched pipe` alone, under `sched-trace record` (system-wide), under `perf sched
/// record` and under a bpftrace run-queue latency histogram. Runs are interleaved, in an order
/// that rotates every round, so that drifts of the machine fall on every column alike; each
/// column is the median of `runs`. Done twice: as the benchmark comes (its two processes wherever
/// the scheduler puts them) and with both pinned to one CPU (no idle-wake-up IPIs: a stable
/// measure of the cost per scheduler event).
pub fn record_overhead(root: &Path, runs: usize, loops: u32) -> Result<()> {
    let sched_trace = root.join("target/release/sched-trace");
    let runqlat = root.join("xtask/bench/runqlat.bt");
    let dir = tempfile_dir()?;
    let st_file = dir.join("pipe.trace");
    let perf_file = dir.join("pipe.perf.data");
    let loops = loops.to_string();
    for pinned in [false, true] {
        let workload = |cmd: &mut Command| pipe_workload(cmd, pinned, &loops);
        let bench_alone = || pipe_bench(pinned, &loops);
        let run = |tracer: Tracer| -> Result<Sample> {
            let text_us = |text: &str| usecs_per_op(text).with_context(|| format!("no usecs/op in {text}"));
            match tracer {
                Tracer::None => {
                    Ok(Sample { usecs_per_op: text_us(&bench_alone()?)?, file: None, lost: None })
                }
                Tracer::SchedTrace => {
                    let mut cmd = Command::new(&sched_trace);
                    cmd.args(["record", "-o"]).arg(&st_file);
                    sched_trace_sample(&mut cmd, &st_file, &bench_alone)
                }
                Tracer::PerfSched => {
                    let mut cmd = Command::new("perf");
                    cmd.args(["sched", "record", "-o"]).arg(&perf_file).arg("--");
                    workload(&mut cmd);
                    let out = cmd.output().context("running perf sched record")?;
                    if !out.status.success() {
                        bail!(
                            "perf sched record failed ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    let us = text_us(&String::from_utf8_lossy(&out.stdout))?;
                    let samples = perf_samples(&String::from_utf8_lossy(&out.stderr))?;
                    let bytes = std::fs::metadata(&perf_file).map(|m| m.len()).unwrap_or(0);
                    Ok(Sample { usecs_per_op: us, file: Some((bytes, samples)), lost: None })
                }
                Tracer::Bpftrace => {
                    let mut cmd = Command::new("bpftrace");
                    cmd.arg(&runqlat);
                    let child = start_tracer(&mut cmd, "bpftrace runqlat.bt", "Attaching", false)?;
                    let bench = bench_alone();
                    stop_tracer(child, "bpftrace")?;
                    Ok(Sample { usecs_per_op: text_us(&bench?)?, file: None, lost: None })
                }
            }
        };
        let samples = interleaved(Tracer::ALL.len(), runs, |i| run(Tracer::ALL[i]))?;
        let how = if pinned { "`taskset -c 0 perf bench sched pipe" } else { "`perf bench sched pipe" };
        println!("\n{how} -l {loops}`, median of {runs} interleaved runs\n");
        let labels: Vec<&str> = Tracer::ALL.iter().map(|t| t.label()).collect();
        print_overhead_table(&labels, &samples);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Appends `perf bench sched pipe -l LOOPS` to `cmd`, pinned to CPU 0 if `pinned`.
fn pipe_workload(cmd: &mut Command, pinned: bool, loops: &str) {
    if pinned {
        cmd.args(["taskset", "-c", "0"]);
    }
    cmd.args(["perf", "bench", "sched", "pipe", "-l", loops]);
}

/// One run of `perf bench sched pipe` (see `pipe_workload`); its output.
fn pipe_bench(pinned: bool, loops: &str) -> Result<String> {
    let mut cmd = Command::new("env");
    pipe_workload(&mut cmd, pinned, loops);
    let out = cmd.output().context("running perf bench")?;
    if !out.status.success() {
        bail!("perf bench failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `run(i)` for every one of `n` configurations, `runs` rounds, in an order that rotates
/// every round so that drifts of the machine fall on every configuration alike.
fn interleaved<T>(n: usize, runs: usize, mut run: impl FnMut(usize) -> Result<T>) -> Result<Vec<Vec<T>>> {
    let mut samples: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..runs {
        for k in 0..n {
            let i = (round + k) % n;
            samples[i].push(run(i)?);
        }
    }
    Ok(samples)
}

/// One run of a workload (`bench`, which prints perf bench's `usecs/op`) under `sched-trace
/// record` (`cmd`, writing `trace`): the workload's speed, the file and what the recorder lost.
fn sched_trace_sample(cmd: &mut Command, trace: &Path, bench: &dyn Fn() -> Result<String>) -> Result<Sample> {
    let child = start_tracer(cmd, "sched-trace record", "sched-trace: recording", true)?;
    let out = bench();
    let rest = stop_tracer(child, "sched-trace record")?;
    let out = out?;
    let us = usecs_per_op(&out).with_context(|| format!("no usecs/op in {out}"))?;
    let events = sched_trace_events(&rest.join("\n"))?;
    let lost = rest
        .iter()
        .find_map(|l| {
            let l = l.strip_prefix("sched-trace: ")?;
            let n = l.strip_prefix("lost ").or_else(|| l.strip_prefix("LOST "))?;
            grouped_number(n.split_whitespace().next()?)
        })
        .with_context(|| format!("sched-trace printed no loss count:\n{}", rest.join("\n")))?;
    let bytes = std::fs::metadata(trace).map(|m| m.len()).unwrap_or(0);
    Ok(Sample { usecs_per_op: us, file: Some((bytes, events)), lost: Some(lost) })
}

/// The table of one overhead measurement: a row per configuration (`labels`, the first one the
/// workload alone), its median, range and slowdown against the first.
fn print_overhead_table(labels: &[&str], samples: &[Vec<Sample>]) {
    let med = |v: &[Sample]| median(v.iter().map(|s| s.usecs_per_op).collect());
    let spread = |v: &[Sample]| {
        let lo = v.iter().map(|s| s.usecs_per_op).fold(f64::INFINITY, f64::min);
        let hi = v.iter().map(|s| s.usecs_per_op).fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    let alone = med(&samples[0]);
    println!(
        "| tracer | µs per round trip (median) | range | slowdown | trace bytes per event | events | lost |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, (label, v)) in labels.iter().zip(samples).enumerate() {
        let m = med(v);
        let (bpe, events) = match v.iter().find_map(|s| s.file) {
            Some(_) => {
                let per: Vec<f64> =
                    v.iter().filter_map(|s| s.file).map(|(b, e)| b as f64 / e.max(1) as f64).collect();
                let events: Vec<f64> = v.iter().filter_map(|s| s.file).map(|(_, e)| e as f64).collect();
                (format!("{:.1}", median(per)), format!("{:.0}", median(events)))
            }
            None => (String::new(), String::new()),
        };
        let lost = match v.iter().filter_map(|s| s.lost).max() {
            Some(l) => l.to_string(),
            None => String::new(),
        };
        let slowdown = if i == 0 { "1.000×".to_string() } else { format!("{:.3}×", m / alone) };
        println!("| {label} | {m:.2} | {} | {slowdown} | {bpe} | {events} | {lost} |", spread(v));
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sched-trace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Wall seconds, CPU seconds and peak resident memory (bytes) of one run of `cmd` (its output
/// discarded), measured by GNU time (`/usr/bin/time`, installed by setup).
fn timed_run(cmd: &Command, what: &str) -> Result<(f64, f64, u64)> {
    let dir = tempfile_dir()?;
    let out = dir.join("time.out");
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(&out)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {what} under /usr/bin/time"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let f: Vec<f64> =
        text.lines().last().unwrap_or("").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    if f.len() != 4 {
        bail!("/usr/bin/time wrote `{text}` for {what}");
    }
    Ok((f[0], f[1] + f[2], f[3] as u64 * 1024))
}

/// How long `sched-trace report` takes on a trace of about ten million events, next to `perf
/// sched latency` on the same run: `perf sched record` (system-wide) around `sched-trace record`
/// of a pinned `perf bench sched pipe`, so both files hold the same scheduler events.
pub fn report_speed(root: &Path, runs: usize, loops: u32) -> Result<()> {
    let sched_trace = root.join("target/release/sched-trace");
    let dir = tempfile_dir()?;
    let trace = dir.join("big.trace");
    let perf_data = dir.join("big.perf.data");
    let out = Command::new("perf")
        .args(["sched", "record", "-o"])
        .arg(&perf_data)
        .arg("--")
        .arg(&sched_trace)
        .args(["record", "--quiet", "-o"])
        .arg(&trace)
        .args(["--", "taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l"])
        .arg(loops.to_string())
        .output()
        .context("running perf sched record around sched-trace record")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("recording failed ({}):\n{stderr}", out.status);
    }
    let (events, samples) = (sched_trace_events(&stderr)?, perf_samples(&stderr)?);

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0);
    // Each analysis of the same run, interleaved round by round.
    let ours = |args: &[&str], env: Option<(&str, &str)>| {
        let mut c = Command::new(&sched_trace);
        c.args(args).arg(&trace);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c
    };
    let mut perf = Command::new("perf");
    perf.args(["sched", "latency", "-i"]).arg(&perf_data);
    let analyses: Vec<(&str, Command, u64, f64)> = vec![
        ("`sched-trace report`", ours(&["report"], None), events, size(&trace)),
        (
            "`sched-trace report`, chunks decoded on the reading thread",
            ours(&["report"], Some(("SCHED_TRACE_READER_THREADS", "1"))),
            events,
            size(&trace),
        ),
        (
            "`sched-trace heatmap --metric runq --format json`",
            ours(&["heatmap", "--metric", "runq", "--format", "json"], None),
            events,
            size(&trace),
        ),
        (
            "`sched-trace heatmap --metric runq --format svg`",
            ours(&["heatmap", "--metric", "runq", "--format", "svg"], None),
            events,
            size(&trace),
        ),
        ("`perf sched latency`", perf, samples, size(&perf_data)),
    ];
    let mut results: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); analyses.len()];
    for _ in 0..runs {
        for (i, (name, cmd, _, _)) in analyses.iter().enumerate() {
            results[i].push(timed_run(cmd, name)?);
        }
    }
    println!(
        "\n`perf sched record -- sched-trace record -- taskset -c 0 perf bench sched pipe -l {loops}`, then each analysis {runs} times, interleaved (median)\n"
    );
    println!("| analysis | events in its file | file | wall time | CPU time | per event | peak memory |");
    println!("|---|---|---|---|---|---|---|");
    for ((name, _, events, mib), v) in analyses.iter().zip(&results) {
        let wall = median(v.iter().map(|r| r.0).collect());
        let cpu = median(v.iter().map(|r| r.1).collect());
        let rss = median(v.iter().map(|r| r.2 as f64).collect()) / (1 << 20) as f64;
        println!(
            "| {name} | {events} | {mib:.0} MiB | {wall:.2} s | {cpu:.2} s | {:.0} ns | {rss:.0} MiB |",
            wall * 1e9 / *events as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
