//! What following a Go program costs it: the test program's benchmark mode (a channel
//! ping-pong and loopback TCP echo traffic competing for GOMAXPROCS=2) alone, under
//! `sched-trace record` (the identity level), and under Go's own execution tracer
//! (`runtime/trace`) on the same work.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{interleaved, median, tempfile_dir};

/// The benchmark's two rates from the JSON line the program prints last.
fn rates(stdout: &[u8], what: &str) -> Result<(f64, f64)> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result"))?;
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{what}: {line}"))?;
    let get = |k: &str| v[k].as_f64().with_context(|| format!("{what}: no {k} in {line}"));
    Ok((get("ping_pongs_per_sec")?, get("echoes_per_sec")?))
}

pub fn go_overhead(root: &Path, go: &Path, runs: usize, seconds: u32) -> Result<()> {
    let dir = tempfile_dir()?;
    let exe = dir.join("schedtarget");
    super::super::build_go_target(root, go, &exe)?;
    let sched_trace = root.join("target/release/sched-trace");
    let trace = dir.join("go.trace");
    let gotrace = dir.join("go.gotrace");
    let duration = format!("{seconds}s");
    let workload = ["-bench", "-clients", "8", "-duration", duration.as_str()];
    let labels = [
        "alone",
        "sched-trace record --go off (threads only)",
        "sched-trace record (identity level, the default)",
        "Go runtime/trace",
        "sched-trace record --go full (scheduler uprobes)",
        "sched-trace record --go full --go-casgstatus",
    ];
    let mut sizes = [0u64; 6];
    let samples = interleaved(labels.len(), runs, |i| {
        let mut cmd = match i {
            1 | 2 | 4 | 5 => {
                let mut c = Command::new(&sched_trace);
                c.args(["record", "--quiet", "-o"]).arg(&trace);
                match i {
                    1 => drop(c.args(["--go", "off"])),
                    4 => drop(c.args(["--go", "full"])),
                    5 => drop(c.args(["--go", "full", "--go-casgstatus"])),
                    _ => {}
                }
                c.arg("--").arg(&exe);
                c
            }
            _ => Command::new(&exe),
        };
        cmd.args(workload).env("GOMAXPROCS", "2");
        if i == 3 {
            cmd.arg("-trace").arg(&gotrace);
        }
        let out = cmd.stderr(Stdio::null()).output().with_context(|| format!("running {}", labels[i]))?;
        if !out.status.success() {
            bail!("{} failed ({})", labels[i], out.status);
        }
        let file = if i == 3 { &gotrace } else { &trace };
        if i > 0 {
            sizes[i] = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        }
        rates(&out.stdout, labels[i])
    })?;
    let med =
        |s: &[(f64, f64)]| (median(s.iter().map(|r| r.0).collect()), median(s.iter().map(|r| r.1).collect()));
    let base = med(&samples[0]);
    println!(
        "\nGo {} test program, `-bench -clients 8 -duration {duration}`, GOMAXPROCS=2, median of {runs} interleaved runs\n",
        go.parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    println!("| configuration | channel ping-pongs/s | slowdown | TCP echoes/s | slowdown | file |");
    println!("|---|---|---|---|---|---|");
    for (i, label) in labels.iter().enumerate() {
        let (p, e) = med(&samples[i]);
        let file = if i == 0 { "-".to_string() } else { format!("{:.1} MB", sizes[i] as f64 / 1e6) };
        println!("| {label} | {p:.0} | {:.2}× | {e:.0} | {:.2}× | {file} |", base.0 / p, base.1 / e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
