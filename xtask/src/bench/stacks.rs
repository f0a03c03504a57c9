//! The flame graph issue's figures: drawing a flame graph of a million CPU samples, next to
//! `perf script | inferno-collapse-perf | inferno-flamegraph` on a `perf record -g` of the same
//! workload; and what capturing stacks costs a context-switch storm, next to offcputime.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    Sample, interleaved, median, perf_samples, pipe_bench, print_overhead_table, sched_trace_events,
    sched_trace_sample, tempfile_dir, timed_run, usecs_per_op,
};

/// About this many CPU samples in each recording.
const SAMPLES_WANTED: u64 = 1_000_000;

/// Records `sched-trace-stackload hot` on every CPU at `hz` samples a second twice, once with
/// `sched-trace record` and once with `perf record -g` (the same workload, one after the other:
/// two samplers at this rate in one run would throttle each other), until each holds about a
/// million samples; then times, `runs` times interleaved, sched-trace's flame graph of its
/// trace against perf's script piped through inferno's collapser and renderer.
pub fn flamegraph_speed(root: &Path, runs: usize, hz: u32, inferno: &Path) -> Result<()> {
    let sched_trace = root.join("target/release/sched-trace");
    let stackload = root.join("target/release/sched-trace-stackload");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let seconds = SAMPLES_WANTED.div_ceil(cpus * u64::from(hz)) + 1;
    let hot = format!(
        "for i in $(seq {cpus}); do {} hot --seconds {seconds} --ground-truth /dev/null & done; wait",
        stackload.display()
    );
    let dir = tempfile_dir()?;
    let trace = dir.join("hot.trace");
    let perf_data = dir.join("hot.perf.data");
    let hz = hz.to_string();

    let recorded = |cmd: &mut Command, what: &str| -> Result<String> {
        let out = cmd.args(["--", "sh", "-c", &hot]).output().with_context(|| format!("running {what}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("{what} failed ({}):\n{stderr}", out.status);
        }
        Ok(stderr)
    };
    let mut ours = Command::new(&sched_trace);
    ours.args(["record", "--quiet", "--sample-hz", &hz, "-o"]).arg(&trace);
    let events = sched_trace_events(&recorded(&mut ours, "sched-trace record of the hot workload")?)?;
    let mut perf = Command::new("perf");
    perf.args(["record", "-g", "-F", &hz, "-o"]).arg(&perf_data);
    let stderr = recorded(&mut perf, "perf record -g of the hot workload")?;
    let perf_count = perf_samples(&stderr)?;
    let ours_count = drawn_samples(&sched_trace, &trace, &dir)?;

    let svg = |name: &str| dir.join(name).display().to_string();
    let ours = |extra: &[&str], name: &str| {
        let mut c = Command::new(&sched_trace);
        c.arg("flamegraph").arg(&trace).args(extra).arg("-o").arg(svg(name));
        c
    };
    let pipeline = |tail: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("perf script -i {} {tail}", perf_data.display()));
        c
    };
    let collapse = inferno.join("inferno-collapse-perf").display().to_string();
    let render = inferno.join("inferno-flamegraph").display().to_string();
    let analyses: Vec<(&str, Command, u64)> = vec![
        ("`sched-trace flamegraph` (time-weighted, grouped by task)", ours(&[], "a.svg"), ours_count),
        (
            "`sched-trace flamegraph --weight samples --group-by none`",
            ours(&["--weight", "samples", "--group-by", "none"], "b.svg"),
            ours_count,
        ),
        (
            "`perf script | inferno-collapse-perf | inferno-flamegraph`",
            pipeline(&format!("| {collapse} | {render} > {}", svg("c.svg"))),
            perf_count,
        ),
        ("`perf script` alone (its part of the above)", pipeline("> /dev/null"), perf_count),
    ];
    let results = interleaved(analyses.len(), runs, |i| timed_run(&analyses[i].1, analyses[i].0))?;
    let mib = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
    println!(
        "\n{cpus} × `sched-trace-stackload hot --seconds {seconds}` at {hz} Hz, recorded by `sched-trace record --sample-hz {hz}` ({events} events, {:.0} MiB) and by `perf record -g -F {hz}` ({:.0} MiB); each analysis {runs} times, interleaved (median)\n",
        mib(&trace),
        mib(&perf_data)
    );
    println!("| analysis | samples | wall time | CPU time | per sample | peak memory |");
    println!("|---|---|---|---|---|---|");
    for ((name, _, samples), v) in analyses.iter().zip(&results) {
        let wall = median(v.iter().map(|r| r.0).collect());
        let cpu = median(v.iter().map(|r| r.1).collect());
        let rss = median(v.iter().map(|r| r.2 as f64).collect()) / (1 << 20) as f64;
        println!(
            "| {name} | {samples} | {wall:.2} s | {cpu:.2} s | {:.2} µs | {rss:.0} MiB |",
            wall * 1e6 / (*samples).max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The samples in a trace: the stacks an unweighted flame graph of it draws.
fn drawn_samples(sched_trace: &Path, trace: &Path, dir: &Path) -> Result<u64> {
    let out = Command::new(sched_trace)
        .arg("flamegraph")
        .arg(trace)
        .args(["--weight", "samples", "-o"])
        .arg(dir.join("count.svg"))
        .output()
        .context("running sched-trace flamegraph")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("sched-trace flamegraph failed ({}):\n{stderr}", out.status);
    }
    // "sched-trace: wrote FILE: 1,234 stacks drawn, ..."
    stderr
        .lines()
        .find_map(|l| {
            let (_, rest) = l.strip_prefix("sched-trace: wrote ")?.split_once(": ")?;
            super::grouped_number(rest.split(" stacks drawn").next()?)
        })
        .with_context(|| format!("sched-trace flamegraph printed no stack count:\n{stderr}"))
}

/// A system-wide off-CPU stack tracer to measure against: bcc's tools print nothing when they
/// are attached, so it is given time to attach.
struct Peer {
    label: String,
    program: &'static str,
}

impl Peer {
    /// The peers that run on this machine, and why the others do not.
    fn available() -> (Vec<Peer>, Vec<String>) {
        let mut peers = Vec::new();
        let mut notes = Vec::new();
        for (program, label) in [
            ("/usr/sbin/offcputime", "libbpf-tools `offcputime` (bcc's CO-RE port)"),
            ("/usr/sbin/offcputime-bpfcc", "bcc `offcputime-bpfcc` (Python, compiles at start)"),
        ] {
            // A one-second run tells whether it can attach here at all.
            let probe = Command::new(program).arg("1").output();
            match probe {
                Ok(o) if o.status.success() => peers.push(Peer { label: label.to_string(), program }),
                Ok(o) => {
                    // bcc says why on either stream.
                    let err = format!(
                        "{}\n{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let why = err
                        .lines()
                        .find(|l| l.contains("kernel headers") || l.starts_with("Exception"))
                        .or_else(|| err.lines().last())
                        .unwrap_or("no message");
                    notes.push(format!("{label} could not run here: {}", why.trim()));
                }
                Err(e) => notes.push(format!("{label} could not be started ({program}): {e}")),
            }
        }
        (peers, notes)
    }

    /// One pinned pipe run under this peer.
    fn sample(&self, loops: &str) -> Result<Sample> {
        let mut child = Command::new(self.program)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.program))?;
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = child.try_wait()? {
            bail!("{} exited before the benchmark ran ({status})", self.program);
        }
        let out = pipe_bench(true, loops);
        let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        if !sent.is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        child.wait().with_context(|| format!("waiting for {}", self.program))?;
        let out = out?;
        let us = usecs_per_op(&out).with_context(|| format!("no usecs/op in {out}"))?;
        Ok(Sample { usecs_per_op: us, file: None, lost: None })
    }
}

/// What each choice of `record --stacks` costs pinned `perf bench sched pipe` (every round trip
/// four scheduler events, two of them switches whose stacks `offcpu` captures), next to
/// offcputime on the same run, all system-wide, interleaved, median of `runs`.
pub fn stack_capture_overhead(root: &Path, runs: usize, loops: u32) -> Result<()> {
    let sched_trace = root.join("target/release/sched-trace");
    let dir = tempfile_dir()?;
    let trace = dir.join("stacks.trace");
    let loops = loops.to_string();
    let (peers, notes) = Peer::available();
    let choices: [(&str, &[&str]); 4] = [
        ("`sched-trace record --stacks none`", &["--stacks", "none"]),
        ("`sched-trace record` (on-CPU samples at 99 Hz, the default)", &[]),
        ("`sched-trace record --stacks offcpu`", &["--stacks", "offcpu"]),
        ("`sched-trace record --stacks oncpu,offcpu,wakeup`", &["--stacks", "oncpu,offcpu,wakeup"]),
    ];
    let mut labels = vec!["alone"];
    labels.extend(choices.iter().map(|c| c.0));
    labels.extend(peers.iter().map(|p| p.label.as_str()));
    let bench = || pipe_bench(true, &loops);
    let samples = interleaved(labels.len(), runs, |i| match i {
        0 => {
            let out = bench()?;
            let us = usecs_per_op(&out).with_context(|| format!("no usecs/op in {out}"))?;
            Ok(Sample { usecs_per_op: us, file: None, lost: None })
        }
        i if i <= choices.len() => {
            let mut cmd = Command::new(&sched_trace);
            cmd.args(["record", "-o"]).arg(&trace).args(choices[i - 1].1);
            sched_trace_sample(&mut cmd, &trace, &bench)
        }
        i => peers[i - 1 - choices.len()].sample(&loops),
    })?;
    println!("\n`taskset -c 0 perf bench sched pipe -l {loops}`, median of {runs} interleaved runs\n");
    print_overhead_table(&labels, &samples);
    for note in notes {
        println!("\n- {note}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
