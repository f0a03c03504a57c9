//! What following a Go program costs it: three workloads of the test program's benchmark mode
//! (a channel ping-pong, loopback TCP echoes, and a request server doing a fixed computation
//! per request), each alone, under `sched-trace record` at each level, under Go's own execution
//! tracer (`runtime/trace`), and under the full level's uprobes with no BPF program at all
//! (counted by `perf stat` through tracefs): what the kernel's uprobe traps cost by themselves.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use sched_trace_binaries::go::{GoBinary, ON_REQUEST_POINTS};

use super::{interleaved, median, tempfile_dir};

struct Workload {
    name: &'static str,
    args: &'static [&'static str],
    /// The key of the program's result line that is this workload's rate.
    rate: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "channel ping-pong round trips/s",
        args: &["-clients", "0"],
        rate: "ping_pongs_per_sec",
    },
    Workload {
        name: "TCP echoes/s (8 clients)",
        args: &["-pingpong=false", "-clients", "8"],
        rate: "echoes_per_sec",
    },
    Workload {
        name: "requests/s (echoes, ≈ 20 µs of computation each)",
        args: &["-pingpong=false", "-clients", "8", "-work", "8000"],
        rate: "echoes_per_sec",
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Alone,
    ThreadsOnly,
    Identity,
    RuntimeTrace,
    Full,
    FullCasgstatus,
    /// The full level's uprobes, counting only: no BPF program, no ring buffer, no recorder.
    FullTraps,
    /// One counting uprobe at `runtime.execute`: a trap per goroutine switch.
    OneTrap,
}

const CONFIGS: [(Config, &str); 8] = [
    (Config::Alone, "alone"),
    (Config::ThreadsOnly, "sched-trace record --go off (threads only)"),
    (Config::Identity, "sched-trace record (identity level, the default)"),
    (Config::RuntimeTrace, "Go runtime/trace"),
    (Config::Full, "sched-trace record --go full (scheduler uprobes)"),
    (Config::FullCasgstatus, "sched-trace record --go full --go-casgstatus"),
    (Config::FullTraps, "the same uprobes as --go full, counting only (perf stat; no BPF)"),
    (Config::OneTrap, "one counting uprobe, at runtime.execute (perf stat; no BPF)"),
];

/// The tracefs groups of the counting uprobes.
const FULL_GROUP: &str = "schedtrace_bench_full";
const ONE_GROUP: &str = "schedtrace_bench_one";

/// Uprobe events defined in tracefs for the benchmark, removed again when dropped.
struct CountingUprobes {
    events: PathBuf,
    defined: Vec<String>,
}

impl CountingUprobes {
    /// Defines, for the Go executable `exe`, one event per probe site of the full level (group
    /// [`FULL_GROUP`]) and one at `runtime.execute` (group [`ONE_GROUP`]).
    fn define(exe: &Path) -> Result<CountingUprobes> {
        let binary = GoBinary::open(exe)
            .with_context(|| format!("reading {}", exe.display()))?
            .with_context(|| format!("{} is not a Go program", exe.display()))?;
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("uprobe_events").exists())
            .context("no tracefs with uprobe_events (mount tracefs on /sys/kernel/tracing)")?;
        let mut uprobes = CountingUprobes { events: root.join("uprobe_events"), defined: Vec::new() };
        let full = binary.probe_sites.iter().filter(|s| !ON_REQUEST_POINTS.contains(&s.point));
        for (i, site) in full.enumerate() {
            uprobes.add(FULL_GROUP, &format!("{}_{i}", site.point), exe, site.file_offset)?;
        }
        let execute = binary
            .probe_sites
            .iter()
            .find(|s| s.point == "execute")
            .with_context(|| format!("no runtime.execute probe site in {}", exe.display()))?;
        uprobes.add(ONE_GROUP, "execute", exe, execute.file_offset)?;
        Ok(uprobes)
    }

    fn add(&mut self, group: &str, name: &str, exe: &Path, file_offset: u64) -> Result<()> {
        let event = format!("{group}/{name}");
        let line = format!("p:{event} {}:{file_offset:#x}\n", exe.display());
        append(&self.events, &line).with_context(|| format!("defining uprobe {line:?}"))?;
        self.defined.push(event);
        Ok(())
    }
}

impl Drop for CountingUprobes {
    fn drop(&mut self) {
        for event in &self.defined {
            let _ = append(&self.events, &format!("-:{event}\n"));
        }
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path)?.write_all(line.as_bytes())
}

/// One run's figures: the workload's rate, and the uprobe hits `perf stat` counted (if it ran).
struct Run {
    rate: f64,
    hits: Option<u64>,
}

/// The workload's rate from the JSON line the program prints last.
fn rate(stdout: &[u8], key: &str, what: &str) -> Result<f64> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result"))?;
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{what}: {line}"))?;
    v[key].as_f64().with_context(|| format!("{what}: no {key} in {line}"))
}

/// The sum of the counts of `perf stat -x,` output.
fn perf_counts(stderr: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(stderr);
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("schedtrace_bench"))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

pub fn go_overhead(root: &Path, go: &Path, runs: usize, seconds: u32) -> Result<()> {
    let dir = tempfile_dir()?;
    let exe = dir.join("schedtarget");
    super::super::build_go_target(root, go, &exe)?;
    let uprobes = CountingUprobes::define(&exe)?;
    let sched_trace = root.join("target/release/sched-trace");
    let trace = dir.join("go.trace");
    let gotrace = dir.join("go.gotrace");
    let duration = format!("{seconds}s");
    let n = CONFIGS.len();
    let mut sizes = vec![[0u64; 3]; n];
    let mut table = Vec::new();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let samples = interleaved(n, runs, |i| {
            let (config, label) = CONFIGS[i];
            let mut cmd = match config {
                Config::Alone | Config::RuntimeTrace => Command::new(&exe),
                Config::FullTraps | Config::OneTrap => {
                    let group = if config == Config::FullTraps { FULL_GROUP } else { ONE_GROUP };
                    let mut c = Command::new("perf");
                    c.args(["stat", "-x,", "-e", &format!("{group}:*"), "--"]).arg(&exe);
                    c
                }
                _ => {
                    let mut c = Command::new(&sched_trace);
                    c.args(["record", "--quiet", "-o"]).arg(&trace);
                    match config {
                        Config::ThreadsOnly => drop(c.args(["--go", "off"])),
                        Config::Full => drop(c.args(["--go", "full"])),
                        Config::FullCasgstatus => drop(c.args(["--go", "full", "--go-casgstatus"])),
                        _ => {}
                    }
                    c.arg("--").arg(&exe);
                    c
                }
            };
            cmd.arg("-bench").args(workload.args).args(["-duration", &duration]).env("GOMAXPROCS", "2");
            if config == Config::RuntimeTrace {
                cmd.arg("-trace").arg(&gotrace);
            }
            let out = cmd.output().with_context(|| format!("running {label}"))?;
            if !out.status.success() {
                bail!(
                    "{label} on {} failed ({}): {}",
                    workload.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let file = match config {
                Config::RuntimeTrace => Some(&gotrace),
                Config::ThreadsOnly | Config::Identity | Config::Full | Config::FullCasgstatus => {
                    Some(&trace)
                }
                _ => None,
            };
            if let Some(file) = file {
                sizes[i][w] = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            }
            let hits =
                matches!(config, Config::FullTraps | Config::OneTrap).then(|| perf_counts(&out.stderr));
            if hits == Some(None) {
                bail!(
                    "perf stat counted no uprobe hits for {label}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(Run { rate: rate(&out.stdout, workload.rate, label)?, hits: hits.flatten() })
        })?;
        table.push(samples);
    }
    drop(uprobes);
    let version = go
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::new();
    writeln!(
        out,
        "\nGo {version} test program, `-bench … -duration {duration}`, GOMAXPROCS=2, median of {runs} interleaved runs\n"
    )?;
    let mut head = "| configuration |".to_string();
    let mut rule = "|---|".to_string();
    for w in &WORKLOADS {
        write!(head, " {} | slowdown |", w.name)?;
        rule.push_str("---|---|");
    }
    writeln!(out, "{head}\n{rule}")?;
    let medians: Vec<Vec<f64>> = table
        .iter()
        .map(|s| s.iter().map(|runs| median(runs.iter().map(|r| r.rate).collect())).collect())
        .collect();
    for (i, (_, label)) in CONFIGS.iter().enumerate() {
        write!(out, "| {label} |")?;
        for m in &medians {
            write!(out, " {:.0} | {:.2}× |", m[i], m[0] / m[i])?;
        }
        writeln!(out)?;
    }
    writeln!(out, "\nUprobe hits per operation (perf stat), and the trace file of each recording:\n")?;
    writeln!(out, "| | {} |", WORKLOADS.map(|w| w.name).join(" | "))?;
    writeln!(out, "|---|{}", "---|".repeat(WORKLOADS.len()))?;
    for (i, (config, label)) in CONFIGS.iter().enumerate() {
        let cells: Vec<String> = (0..WORKLOADS.len())
            .map(|w| match config {
                Config::FullTraps | Config::OneTrap => {
                    let per_op: Vec<f64> = table[w][i]
                        .iter()
                        .filter_map(|r| Some(r.hits? as f64 / (r.rate * seconds as f64)))
                        .collect();
                    format!("{:.1} hits", median(per_op))
                }
                Config::Alone => "-".into(),
                _ => format!("{:.1} MB", sizes[i][w] as f64 / 1e6),
            })
            .collect();
        if *config != Config::Alone {
            writeln!(out, "| {label} | {} |", cells.join(" | "))?;
        }
    }
    print!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
