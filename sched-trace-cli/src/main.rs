//! The `sched-trace` binary: a thin command line over the library.

use std::{
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sched_trace::{
    correlate, export,
    record::{self, RecordOptions},
    report::{self, Report, ReportFilter},
    trace::TraceReader,
    units,
};

#[derive(Parser)]
#[command(
    name = "sched-trace",
    version,
    about = "Where the time of a goroutine-style program goes: its runtime's scheduler vs. the kernel's CFS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record scheduler events into a trace file (needs root or CAP_BPF+CAP_PERFMON).
    ///
    /// System-wide when no PID and no command is given. With a command, start it, trace it and
    /// all its descendants, stop when it exits and pass its exit code through.
    Record {
        /// Trace this process (and its threads); repeat for several.
        #[arg(short, long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// Trace file to write.
        #[arg(short, long, default_value = "sched-trace.trace")]
        output: PathBuf,
        /// Stop after this long (e.g. 10s, 500ms, 2m).
        #[arg(short, long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Kernel ring buffer size in bytes (a power of two, e.g. 33554432 or 32MiB).
        #[arg(long, value_parser = parse_size, default_value = "32MiB")]
        ring_buffer_size: u32,
        /// Print nothing while recording (no start notice, no live status line).
        #[arg(long)]
        quiet: bool,
        /// Also attach the USDT probes of this executable (those of the traced command or
        /// processes are attached anyway); repeat for several.
        #[arg(long, value_name = "BINARY")]
        usdt: Vec<PathBuf>,
        /// Attach no USDT probe (kernel scheduler events only).
        #[arg(long, conflicts_with = "usdt")]
        no_usdt: bool,
        /// The command to start and trace.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Per-thread and per-process scheduling statistics of a trace.
    Report {
        /// The trace file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Rows per table in the text report.
        #[arg(long, default_value_t = 30)]
        limit: usize,
        /// Only this process: its threads and its user-level tasks.
        #[arg(long)]
        pid: Option<u32>,
        /// Only this thread, and the user-level tasks that ran on it.
        #[arg(long)]
        tid: Option<u32>,
        /// Only the user-level task with this id (with --pid when several processes have one).
        #[arg(long = "task", value_name = "ID")]
        task: Option<u64>,
    },
    /// Write the correlated timelines for a trace viewer: a track per thread, per CPU and per
    /// user-level task (Perfetto's protobuf format for ui.perfetto.dev, or Chrome JSON).
    Export {
        /// The trace file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "perfetto")]
        format: ExportFormat,
        /// File to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Record a demo workload and write its trace and report into a directory.
    Demo {
        /// Directory for the trace and the report.
        #[arg(short, long, default_value = "demo-out")]
        output: PathBuf,
        /// Workload on the built-in reference runtime: pingpong, netpoll, imbalance,
        /// cfs-contention, blocking-syscall or mixed; or `threads` (plain threads: sleeps, epoll
        /// waits, a ping-pong and CPU hogs).
        #[arg(long, default_value = "mixed")]
        workload: String,
    },
    /// Print a trace's events, one per line, in timestamp order.
    Dump {
        /// The trace file.
        file: PathBuf,
        /// Only events that involve this thread.
        #[arg(long)]
        tid: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record { pids, output, duration, ring_buffer_size, quiet, usdt, no_usdt, command } => {
            if !pids.is_empty() && !command.is_empty() {
                eprintln!("error: give either --pid or a command, not both");
                return ExitCode::from(2);
            }
            let opts = RecordOptions {
                output,
                pids,
                command,
                command_env: Vec::new(),
                duration,
                ring_buffer_bytes: ring_buffer_size,
                progress: !quiet,
                command_line: std::env::args().collect(),
                usdt_binaries: usdt,
                usdt: !no_usdt,
            };
            run_record(opts)
        }
        Command::Report { file, json, limit, pid, tid, task } => {
            run_report(&file, json, limit, &ReportFilter { pid, tid, task }).map(|()| 0)
        }
        Command::Dump { file, tid } => run_dump(&file, tid).map(|()| 0),
        Command::Export { file, format, output } => run_export(&file, format, &output).map(|()| 0),
        Command::Demo { output, workload } => run_demo(&output, &workload),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_record(opts: RecordOptions) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let output = opts.output.clone();
    let summary = runtime
        .block_on(record::record(opts))
        .with_context(|| format!("recording to {}", output.display()))?;
    eprintln!(
        "sched-trace: {} events in {:.2} s written to {} ({})",
        units::count(summary.events),
        summary.elapsed.as_secs_f64(),
        summary.output.display(),
        units::bytes(summary.bytes)
    );
    let lost = summary.drops.lost_records();
    if lost == 0 {
        eprintln!("sched-trace: lost 0 events");
    } else {
        let kinds: Vec<String> =
            summary.drops.lost_by_kind().iter().map(|(k, n)| format!("{k} {}", units::count(*n))).collect();
        eprintln!(
            "sched-trace: LOST {} events ({}); try a larger --ring-buffer-size",
            units::count(lost),
            kinds.join(", ")
        );
    }
    if summary.drops.filter_table_full() > 0 {
        eprintln!(
            "sched-trace: {} child processes were not followed (kernel filter table full)",
            units::count(summary.drops.filter_table_full())
        );
    }
    eprintln!("sched-trace: stopped because {}", summary.stop);
    Ok(summary.exit_code())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    /// Perfetto's native protobuf trace (opens in ui.perfetto.dev).
    Perfetto,
    /// Chrome trace-event JSON (chrome://tracing; Perfetto opens it too).
    ChromeJson,
}

fn run_export(file: &Path, format: ExportFormat, output: &Path) -> Result<()> {
    let reader = TraceReader::open(file).with_context(|| format!("reading trace {}", file.display()))?;
    let correlation = correlate::correlate_with_timelines(reader)
        .with_context(|| format!("reading trace {}", file.display()))?;
    let tracks = export::Tracks::build(&correlation);
    let unplaced = correlation.unplaced();
    if unplaced.total() > 0 {
        eprintln!(
            "sched-trace: note: {} contradicts itself: {}; the tracks around them are approximate",
            file.display(),
            unplaced.describe().join(", ")
        );
    }
    let summary = match format {
        ExportFormat::Perfetto => export::perfetto::write(&tracks, output),
        ExportFormat::ChromeJson => export::chrome::write(&tracks, output),
    }
    .with_context(|| format!("exporting {} to {}", file.display(), output.display()))?;
    eprintln!(
        "sched-trace: wrote {}: {} threads, {} CPUs, {} user-level tasks, {} slices",
        output.display(),
        units::count(summary.threads as u64),
        summary.cpus,
        units::count(summary.tasks as u64),
        units::count(summary.slices as u64)
    );
    Ok(())
}

fn load_report(file: &Path, filter: &ReportFilter) -> Result<Report> {
    let reader = TraceReader::open(file).with_context(|| format!("reading trace {}", file.display()))?;
    let correlation =
        correlate::correlate(reader).with_context(|| format!("reading trace {}", file.display()))?;
    Ok(Report::build_filtered(file, &correlation, filter))
}

fn run_report(file: &Path, json: bool, limit: usize, filter: &ReportFilter) -> Result<()> {
    let report = load_report(file, filter)?;
    if let Some(id) = filter.task
        && report.tasks.is_none()
    {
        anyhow::bail!(
            "{} has no user-level task {id}{}",
            file.display(),
            match filter.pid {
                Some(pid) => format!(" in PID {pid}"),
                None => String::new(),
            }
        );
    }
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        out.write_all(report::text::render(&report, limit).as_bytes())
    };
    let written = written.and_then(|()| out.flush());
    written.or_else(|e| stdout_closed_or(e, "the report"))
}

/// The reference runtime's workloads (`refrt list`).
const RUNTIME_WORKLOADS: &[&str] =
    &["pingpong", "netpoll", "imbalance", "cfs-contention", "blocking-syscall", "mixed"];

/// Records a workload and writes `demo.trace`, the workload's own ground-truth log,
/// `report.txt` and `report.json` into `dir`.
fn run_demo(dir: &Path, workload: &str) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let (binary, mut args, ground_truth) = if workload == "threads" {
        ("sched-trace-testload", vec![OsString::from("--ground-truth")], dir.join("ground-truth.jsonl"))
    } else if RUNTIME_WORKLOADS.contains(&workload) {
        ("refrt", vec![OsString::from(workload)], dir.join("ground-truth.log"))
    } else {
        anyhow::bail!("unknown workload `{workload}` (available: {}, threads)", RUNTIME_WORKLOADS.join(", "));
    };
    let exe = std::env::current_exe().context("locating the sched-trace binary")?;
    let program = exe.with_file_name(binary);
    anyhow::ensure!(
        program.exists(),
        "the demo workload {} is missing (it is built next to sched-trace by `cargo build --bins`)",
        program.display()
    );
    let mut command_env = Vec::new();
    if workload == "threads" {
        args.push(ground_truth.clone().into());
    } else {
        command_env.push(("REFRUNTIME_GROUND_TRUTH".into(), ground_truth.clone().into()));
    }
    let mut command = vec![program.into_os_string()];
    command.extend(args);
    let trace = dir.join("demo.trace");
    let code = run_record(RecordOptions {
        output: trace.clone(),
        pids: Vec::new(),
        command,
        command_env,
        duration: None,
        ring_buffer_bytes: RecordOptions::DEFAULT_RING_BUFFER_BYTES,
        progress: true,
        command_line: std::env::args().collect(),
        usdt_binaries: Vec::new(),
        usdt: true,
    })?;
    let report = load_report(&trace, &ReportFilter::default())?;
    let text = report::text::render(&report, 30);
    let txt = dir.join("report.txt");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;
    let json = dir.join("report.json");
    let body = serde_json::to_vec_pretty(&report).context("encoding the report")?;
    std::fs::write(&json, body).with_context(|| format!("writing {}", json.display()))?;
    print!("{text}");
    eprintln!(
        "sched-trace demo: wrote {}, {}, {} and the workload's own log {}",
        trace.display(),
        txt.display(),
        json.display(),
        ground_truth.display()
    );
    Ok(code)
}

fn run_dump(file: &Path, tid: Option<u32>) -> Result<()> {
    let mut reader = TraceReader::open(file).with_context(|| format!("reading trace {}", file.display()))?;
    let start = reader.info().start_ns;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(e) = reader.next_event().with_context(|| format!("reading trace {}", file.display()))? {
        if tid.is_some_and(|t| e.tid != t && !e.other_tids().any(|(o, _)| o == t)) {
            continue;
        }
        let line = writeln!(
            out,
            "{:>14.6} cpu{:<3} {:>7}/{:<7} {:?}",
            e.ts.saturating_sub(start) as f64 / 1e6,
            e.cpu,
            e.pid,
            e.tid,
            e.kind
        );
        if let Err(e) = line {
            return stdout_closed_or(e, "the dump");
        }
    }
    if let Err(e) = out.flush() {
        return stdout_closed_or(e, "the dump");
    }
    let tables = reader.tables();
    if let Some(t) = &tables.truncation {
        eprintln!(
            "note: the trace ends in a partial chunk at byte {} ({} bytes discarded)",
            t.offset, t.discarded_bytes
        );
    }
    Ok(())
}

/// A failed write to standard output: fine when the reader went away (piped into `head`), an
/// error otherwise (a full disk, an I/O error).
fn stdout_closed_or(e: std::io::Error, what: &str) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(e).with_context(|| format!("writing {what} to standard output"))
}

/// Parses `4096`, `64KiB`, `32MiB`, `1GiB` (also K, M, G, KB, MB, GB as powers of two).
fn parse_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    let v = n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))?;
    u32::try_from(v).map_err(|_| format!("`{s}` is too large (at most 2GiB)"))
}
