//! `cargo xtask bench`: measured figures for BENCHMARKS.md, every configuration in one run.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

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

/// What recording a context-switch storm costs: `perf bench sched pipe` alone, under
/// `sched-trace record`, and under `perf sched record` (the peer), in one run.
pub fn record_overhead(root: &Path, runs: usize, loops: u32) -> Result<()> {
    let sched_trace = root.join("target/release/sched-trace");
    let dir = std::env::temp_dir();
    let bench = ["bench", "sched", "pipe", "-l"];
    let loops = loops.to_string();
    let run_one = |cmd: &mut Command, what: &str| -> Result<(f64, String, u64)> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let us = usecs_per_op(&stdout).with_context(|| format!("{what}: no usecs/op in {stdout}"))?;
        Ok((us, String::from_utf8_lossy(&out.stderr).into_owned(), 0))
    };
    let median_of = |f: &dyn Fn() -> Result<(f64, String, u64)>| -> Result<(f64, String, u64)> {
        let mut all: Vec<(f64, String, u64)> = (0..runs).map(|_| f()).collect::<Result<_>>()?;
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(all.swap_remove(all.len() / 2))
    };
    let plain = median_of(&|| run_one(Command::new("perf").args(bench).arg(&loops), "perf bench"))?;
    let st_file = dir.join("sched-trace-bench-pipe.trace");
    let traced = median_of(&|| {
        let mut r = run_one(
            Command::new(&sched_trace)
                .args(["record", "--quiet", "-o"])
                .arg(&st_file)
                .args(["--", "perf"])
                .args(bench)
                .arg(&loops),
            "sched-trace record",
        )?;
        r.2 = std::fs::metadata(&st_file).map(|m| m.len()).unwrap_or(0);
        Ok(r)
    })?;
    let perf_file = dir.join("sched-trace-bench-pipe.perf.data");
    let perf = median_of(&|| {
        let mut r = run_one(
            Command::new("perf")
                .args(["sched", "record", "-o"])
                .arg(&perf_file)
                .args(["--", "perf"])
                .args(bench)
                .arg(&loops),
            "perf sched record",
        )?;
        r.2 = std::fs::metadata(&perf_file).map(|m| m.len()).unwrap_or(0);
        Ok(r)
    })?;
    let summary = |stderr: &str| -> String {
        stderr
            .lines()
            .filter(|l| {
                l.starts_with("sched-trace: ")
                    && (l.contains("events in") || l.contains("lost") || l.contains("LOST"))
            })
            .map(|l| l.trim_start_matches("sched-trace: ").to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("\n| `perf bench sched pipe -l {loops}` | µs per round trip | slowdown | trace size | notes |");
    println!("|---|---|---|---|---|");
    println!("| alone | {:.2} | 1.00× | | |", plain.0);
    println!(
        "| under `sched-trace record -- …` | {:.2} | {:.2}× | {:.1} MiB | {} |",
        traced.0,
        traced.0 / plain.0,
        mib(traced.2),
        summary(&traced.1)
    );
    println!(
        "| under `perf sched record -- …` (system-wide) | {:.2} | {:.2}× | {:.1} MiB | |",
        perf.0,
        perf.0 / plain.0,
        mib(perf.2)
    );
    let _ = std::fs::remove_file(&st_file);
    let _ = std::fs::remove_file(&perf_file);
    Ok(())
}
