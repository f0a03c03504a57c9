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
    correlate::{self, Metric},
    export,
    filter::Filter,
    flamegraph, heatmap,
    record::{self, RecordOptions, StackOptions},
    report::{self, Report},
    trace::TraceReader,
    units,
};
use sched_trace_flamegraph::FlameKind;

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
        /// Trace the processes of this cgroup and of every cgroup below it, including those
        /// that start or move in while recording (a directory of the v2 hierarchy, or of the v1
        /// `cpu` or `cpuset` hierarchy, e.g. /sys/fs/cgroup/system.slice/app.service); repeat for
        /// several. Filtered in the kernel.
        #[arg(long = "cgroup", value_name = "DIR", conflicts_with = "pids")]
        cgroups: Vec<PathBuf>,
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
        /// How to follow the goroutines of Go programs: `identity` reads which goroutine each
        /// thread runs at every switch-out and CPU sample (no uprobe); `off` traces their
        /// threads only.
        #[arg(long, value_enum, default_value = "identity")]
        go: sched_trace::record::go::GoLevel,
        /// With `--go full`: also probe `runtime.casgstatus`, every change of a goroutine's
        /// status, to see its system calls (the time its thread slept in one is the goroutine's
        /// blocking-call time, not "blocked in the kernel"). Several more uprobe hits per
        /// goroutine switch: see BENCHMARKS.md.
        #[arg(long)]
        go_casgstatus: bool,
        /// Stacks to capture, comma-separated: `oncpu` (CPU-clock samples of the traced
        /// threads), `offcpu` (at every switch-out), `wakeup` (the waker's, at every wake-up),
        /// or `none`. A stack walk at every switch costs: see BENCHMARKS.md.
        #[arg(long, default_value = "oncpu", value_parser = parse_stacks)]
        stacks: StackKinds,
        /// CPU samples per second on each CPU (with `--stacks oncpu`).
        #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        sample_hz: u64,
        /// Distinct stacks the kernel's stack map holds (a stack beyond it is counted, not kept).
        #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(16..=1 << 20))]
        stack_map_entries: u32,
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
        #[command(flatten)]
        filter: FilterArgs,
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
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Draw a latency heat map: time across, latency up (log scale), colour for how many events
    /// fell in each cell.
    Heatmap {
        /// The trace file.
        file: PathBuf,
        /// What to draw.
        #[arg(long, value_enum, default_value = "runq")]
        metric: MetricArg,
        /// File to write (its extension picks the format: .svg, .html, .json); the terminal
        /// when not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output format (by default from the file's extension, or `term` without a file).
        #[arg(long, value_enum)]
        format: Option<HeatmapFormat>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Small multiples: one map per CPU, thread, process, user task or cgroup (of the cpu controller) (the --top with the
        /// most events), on one colour scale.
        #[arg(long, value_enum)]
        per: Option<PerArg>,
        /// How many small multiples --per draws.
        #[arg(long, default_value_t = 6)]
        top: usize,
        /// Rows per power of two of latency.
        #[arg(long, default_value_t = heatmap::DEFAULT_SUB_BUCKETS)]
        sub_buckets: u32,
        /// Column width (e.g. 10ms, 1s); by default about 240 columns of a round width.
        #[arg(long, value_parser = units::parse_latency, conflicts_with = "columns")]
        column_width: Option<u64>,
        /// Number of columns.
        #[arg(long)]
        columns: Option<usize>,
        /// Latencies shown, e.g. 10us..1s (by default every row that has events).
        #[arg(long, value_parser = units::parse_latency_range)]
        latency_range: Option<(u64, u64)>,
        /// Draw where this trace's distribution differs from OTHER's, on one scale.
        #[arg(long, value_name = "OTHER", conflicts_with = "per")]
        diff: Option<PathBuf>,
    },
    /// Draw a flame graph of the trace's stacks: where threads ran (oncpu), where and why they
    /// waited (offcpu), who woke them (wakeup), or both (offwake); grouped by user task, thread
    /// or process at the root.
    Flamegraph {
        /// The trace file.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "oncpu")]
        kind: FlameKindArg,
        /// SVG file to write (with --folded: the folded stacks; standard output if not given).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write folded stacks (FlameGraph/inferno format) instead of an SVG.
        #[arg(long)]
        folded: bool,
        /// What the root frames name.
        #[arg(long, value_enum, default_value = "task")]
        group_by: GroupByArg,
        /// On-CPU weights: each group's exact on-CPU time split by its samples, or the samples.
        #[arg(long, value_enum, default_value = "time")]
        weight: WeightArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the waits of this metric (with --latency): a heat map's rectangle.
        #[arg(long, value_enum, requires = "latency")]
        metric: Option<MetricArg>,
        /// Their lengths, e.g. 1ms..10ms.
        #[arg(long, value_parser = units::parse_latency_range, requires = "metric")]
        latency: Option<(u64, u64)>,
        /// A differential flame graph against OTHER: red where this trace has more.
        #[arg(long, value_name = "OTHER")]
        diff: Option<PathBuf>,
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

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum MetricArg {
    /// Run-queue latency: woken or preempted → running.
    Runq,
    /// Off-CPU time: switch-out → switch-in.
    Offcpu,
    /// Interruptible sleeps outside epoll.
    Sleep,
    /// Epoll waits.
    Epoll,
    /// Uninterruptible blocks.
    Blocked,
    /// Waits of threads whose cgroup ran out of CPU quota.
    Throttled,
    /// User tasks waiting in the runtime's queues (needs runtime probes).
    TaskQueue,
    /// User tasks parked in the netpoller (needs runtime probes).
    Netpoll,
    /// CFS-stolen time per run of a user task (needs runtime probes).
    CfsStolen,
}

impl MetricArg {
    fn metric(self) -> Metric {
        match self {
            MetricArg::Runq => Metric::Runq,
            MetricArg::Offcpu => Metric::Offcpu,
            MetricArg::Sleep => Metric::Sleep,
            MetricArg::Epoll => Metric::Epoll,
            MetricArg::Blocked => Metric::Blocked,
            MetricArg::Throttled => Metric::Throttled,
            MetricArg::TaskQueue => Metric::TaskQueue,
            MetricArg::Netpoll => Metric::Netpoll,
            MetricArg::CfsStolen => Metric::CfsStolen,
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FlameKindArg {
    Oncpu,
    Offcpu,
    Wakeup,
    Offwake,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum GroupByArg {
    Task,
    Thread,
    Process,
    None,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum WeightArg {
    Time,
    Samples,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HeatmapFormat {
    Svg,
    Html,
    Term,
    Json,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PerArg {
    Cpu,
    Thread,
    Process,
    Task,
    /// The cgroup of the `cpu` controller's hierarchy.
    Cgroup,
}

/// The selection every analysis takes (see `sched_trace::filter`).
#[derive(clap::Args, Clone, Debug, Default)]
struct FilterArgs {
    /// Only this process: its threads and its user-level tasks.
    #[arg(long)]
    pid: Option<u32>,
    /// Only this thread, and the user-level tasks that ran on it.
    #[arg(long)]
    tid: Option<u32>,
    /// Only the user-level task with this id (with --pid when several processes have one).
    #[arg(long = "task", value_name = "ID")]
    task: Option<u64>,
    /// Only this CPU (what ran there and waited there).
    #[arg(long)]
    cpu: Option<u16>,
    /// Only threads with this name, or the threads of processes with this name.
    #[arg(long)]
    comm: Option<String>,
    /// Only the threads of this cgroup and of the cgroups below it: a directory
    /// (/sys/fs/cgroup/cpu/app) or a path from a hierarchy's root (/app).
    #[arg(long, value_name = "CGROUP")]
    cgroup: Option<String>,
    /// From this many seconds after the start of the recording.
    #[arg(long, value_name = "SECONDS")]
    from: Option<f64>,
    /// Up to this many seconds after the start of the recording.
    #[arg(long, value_name = "SECONDS")]
    to: Option<f64>,
}

impl FilterArgs {
    fn filter(self) -> Result<Filter> {
        for (name, v) in [("--from", self.from), ("--to", self.to)] {
            if let Some(v) = v {
                anyhow::ensure!(
                    v.is_finite() && v >= 0.0,
                    "{name} {v}: give seconds from the start of the recording"
                );
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to) {
            anyhow::ensure!(from < to, "--from {from} is not before --to {to}");
        }
        Ok(Filter {
            pid: self.pid,
            tid: self.tid,
            task: self.task,
            cpu: self.cpu,
            comm: self.comm,
            cgroup: self.cgroup,
            cgroup_selection: None,
            from_s: self.from,
            to_s: self.to,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record {
            pids,
            cgroups,
            output,
            duration,
            ring_buffer_size,
            quiet,
            usdt,
            no_usdt,
            go,
            go_casgstatus,
            stacks,
            sample_hz,
            stack_map_entries,
            command,
        } => {
            if !pids.is_empty() && !command.is_empty() {
                eprintln!("error: give either --pid or a command, not both");
                return ExitCode::from(2);
            }
            if go_casgstatus && go != sched_trace::record::go::GoLevel::Full {
                eprintln!("error: --go-casgstatus adds to the full level: give --go full with it");
                return ExitCode::from(2);
            }
            let opts = RecordOptions {
                output,
                pids,
                cgroups,
                command,
                command_env: Vec::new(),
                duration,
                ring_buffer_bytes: ring_buffer_size,
                progress: !quiet,
                command_line: std::env::args().collect(),
                usdt_binaries: usdt,
                usdt: !no_usdt,
                go,
                go_casgstatus,
                stacks: StackOptions {
                    oncpu_hz: stacks.oncpu.then_some(sample_hz),
                    offcpu: stacks.offcpu,
                    wakeup: stacks.wakeup,
                    map_entries: stack_map_entries,
                },
            };
            run_record(opts)
        }
        Command::Report { file, json, limit, filter } => {
            filter.filter().and_then(|f| run_report(&file, json, limit, &f)).map(|()| 0)
        }
        Command::Dump { file, tid } => run_dump(&file, tid).map(|()| 0),
        Command::Export { file, format, output, filter } => {
            filter.filter().and_then(|f| run_export(&file, format, &output, &f)).map(|()| 0)
        }
        Command::Heatmap {
            file,
            metric,
            output,
            format,
            filter,
            per,
            top,
            sub_buckets,
            column_width,
            columns,
            latency_range,
            diff,
        } => (|| {
            let mut spec = heatmap::Spec::new(metric.metric());
            spec.filter = filter.filter()?;
            check_cgroup(&file, &spec.filter)?;
            spec.per = per.map(|p| {
                let per = match p {
                    PerArg::Cpu => heatmap::Per::Cpu,
                    PerArg::Thread => heatmap::Per::Thread,
                    PerArg::Process => heatmap::Per::Process,
                    PerArg::Task => heatmap::Per::Task,
                    PerArg::Cgroup => heatmap::Per::Cgroup,
                };
                (per, top)
            });
            anyhow::ensure!((1..=16).contains(&sub_buckets), "--sub-buckets {sub_buckets}: give 1 to 16");
            anyhow::ensure!(
                columns.is_none_or(|c| (1..=heatmap::grid::MAX_COLUMNS).contains(&c)),
                "--columns: give 1 to {}",
                heatmap::grid::MAX_COLUMNS
            );
            (spec.sub_buckets, spec.column_width_ns, spec.columns, spec.latency_range) =
                (sub_buckets, column_width, columns, latency_range);
            run_heatmap(&file, &spec, output.as_deref(), format, diff.as_deref())
        })()
        .map(|()| 0),
        Command::Flamegraph {
            file,
            kind,
            output,
            folded,
            group_by,
            weight,
            filter,
            metric,
            latency,
            diff,
        } => (|| {
            let mut spec = flamegraph::Spec::new(match kind {
                FlameKindArg::Oncpu => FlameKind::OnCpu,
                FlameKindArg::Offcpu => FlameKind::OffCpu,
                FlameKindArg::Wakeup => FlameKind::Wakeup,
                FlameKindArg::Offwake => FlameKind::OffWake,
            });
            spec.group_by = match group_by {
                GroupByArg::Task => flamegraph::GroupBy::Task,
                GroupByArg::Thread => flamegraph::GroupBy::Thread,
                GroupByArg::Process => flamegraph::GroupBy::Process,
                GroupByArg::None => flamegraph::GroupBy::None,
            };
            spec.weight = match weight {
                WeightArg::Time => flamegraph::Weight::Time,
                WeightArg::Samples => flamegraph::Weight::Samples,
            };
            spec.filter = filter.filter()?;
            check_cgroup(&file, &spec.filter)?;
            spec.selection = metric.zip(latency).map(|(m, l)| (m.metric(), l));
            run_flamegraph(&file, &spec, output.as_deref(), folded, diff.as_deref())
        })()
        .map(|()| 0),
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

/// Opens and correlates `file` for `filter`'s window.
fn correlate_file(
    file: &Path,
    filter: &Filter,
    mut opts: correlate::Options,
) -> Result<correlate::Correlation> {
    let reader = TraceReader::open(file).with_context(|| format!("reading trace {}", file.display()))?;
    opts.window = filter.window(reader.info().start_ns);
    correlate::correlate_with(reader, opts).with_context(|| format!("reading trace {}", file.display()))
}

fn run_export(file: &Path, format: ExportFormat, output: &Path, filter: &Filter) -> Result<()> {
    check_cgroup(file, filter)?;
    let correlation =
        correlate_file(file, filter, correlate::Options { timelines: true, ..Default::default() })?;
    let tracks = export::Tracks::build_filtered(&correlation, filter);
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

/// A `--cgroup` the trace has no cgroup for is an error that lists the ones it has.
fn check_cgroup(file: &Path, filter: &Filter) -> Result<()> {
    if let Some(name) = &filter.cgroup {
        let pre = sched_trace::trace::prescan(file).with_context(|| format!("reading {}", file.display()))?;
        sched_trace::filter::CgroupSelection::resolve(name, &pre.cgroups)
            .map_err(|e| anyhow::anyhow!("--cgroup {name}: {}: {e}", file.display()))?;
    }
    Ok(())
}

fn load_report(file: &Path, filter: &Filter) -> Result<Report> {
    check_cgroup(file, filter)?;
    let correlation = correlate_file(file, filter, correlate::Options::default())?;
    Ok(Report::build_filtered(file, &correlation, filter))
}

fn run_report(file: &Path, json: bool, limit: usize, filter: &Filter) -> Result<()> {
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

fn heatmap_format(output: Option<&Path>, format: Option<HeatmapFormat>) -> Result<HeatmapFormat> {
    if let Some(f) = format {
        return Ok(f);
    }
    let Some(out) = output else { return Ok(HeatmapFormat::Term) };
    match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => Ok(HeatmapFormat::Svg),
        Some("html" | "htm") => Ok(HeatmapFormat::Html),
        Some("json") => Ok(HeatmapFormat::Json),
        _ => anyhow::bail!(
            "cannot tell the format of {} from its name: give --format svg|html|json|term",
            out.display()
        ),
    }
}

fn run_heatmap(
    file: &Path,
    spec: &heatmap::Spec,
    output: Option<&Path>,
    format: Option<HeatmapFormat>,
    diff: Option<&Path>,
) -> Result<()> {
    let format = heatmap_format(output, format)?;
    let body = match diff {
        Some(other) => {
            let d = heatmap::diff(file, other, spec)
                .with_context(|| format!("drawing {} against {}", file.display(), other.display()))?;
            match format {
                HeatmapFormat::Svg => heatmap::svg::render_diff(&d).svg,
                HeatmapFormat::Html => heatmap::html::render_diff(&d),
                HeatmapFormat::Json => format!(
                    "{:#}
",
                    heatmap::json::diff_to_value(&d)
                ),
                HeatmapFormat::Term => anyhow::bail!("--diff draws SVG, HTML or JSON: give -o FILE.svg"),
            }
        }
        None => {
            let h = heatmap::build(file, spec)
                .with_context(|| format!("drawing a heat map of {}", file.display()))?;
            match format {
                HeatmapFormat::Svg => heatmap::svg::render(&h).svg,
                HeatmapFormat::Html => heatmap::html::render(&h),
                HeatmapFormat::Json => format!(
                    "{:#}
",
                    heatmap::json::to_value(&h)
                ),
                HeatmapFormat::Term => heatmap::term::render(
                    &h,
                    heatmap::term::terminal_width(),
                    heatmap::term::Colours::detect(),
                ),
            }
        }
    };
    match output {
        Some(path) => {
            std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("sched-trace: wrote {}", path.display());
            Ok(())
        }
        None => {
            let mut out = std::io::stdout().lock();
            let written = out.write_all(body.as_bytes()).and_then(|()| out.flush());
            written.or_else(|e| stdout_closed_or(e, "the heat map"))
        }
    }
}

fn run_flamegraph(
    file: &Path,
    spec: &flamegraph::Spec,
    output: Option<&Path>,
    folded: bool,
    diff: Option<&Path>,
) -> Result<()> {
    let load = |f: &Path| {
        flamegraph::build(f, spec).with_context(|| format!("drawing a flame graph of {}", f.display()))
    };
    let flame = load(file)?;
    let mut body = Vec::new();
    if folded {
        body = sched_trace_flamegraph::fold::to_text(&flame.lines).into_bytes();
    } else {
        anyhow::ensure!(output.is_some(), "a flame graph is an SVG: give -o FILE.svg (or --folded for text)");
        match diff {
            Some(other) => {
                let before = load(other)?;
                let title = format!("{} against {}", flame.title, other.display());
                sched_trace_flamegraph::render_diff(
                    &before.lines,
                    &flame.lines,
                    flame.kind,
                    &title,
                    Some(&flame.subtitle),
                    &mut body,
                )
            }
            None => render_svg(&flame, &mut body),
        }
        .context("drawing the flame graph")?;
    }
    let s = flame.symbols;
    let named = if s.frames == 0 { 100.0 } else { s.resolved as f64 * 100.0 / s.frames as f64 };
    match output {
        Some(path) => {
            std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "sched-trace: wrote {}: {} stacks drawn, {} distinct, {named:.0}% of frames named{}",
                path.display(),
                units::count(flame.stacks.drawn),
                units::count(flame.lines.len() as u64),
                unnamed_note(&s)
            );
            Ok(())
        }
        None => {
            let mut out = std::io::stdout().lock();
            let written = out.write_all(&body).and_then(|()| out.flush());
            written.or_else(|e| stdout_closed_or(e, "the folded stacks"))
        }
    }
}

/// A flame graph as inferno draws it.
fn render_svg(flame: &flamegraph::Flame, out: &mut Vec<u8>) -> std::io::Result<()> {
    sched_trace_flamegraph::render(&flame.lines, flame.kind, &flame.title, Some(&flame.subtitle), out)
}

/// Why frames were not named, when some were not.
fn unnamed_note(s: &sched_trace_flamegraph::SymbolStats) -> String {
    let mut why = Vec::new();
    for (n, what) in [
        (s.no_mapping, "outside every recorded mapping"),
        (s.no_file, "in files no longer there"),
        (s.other_build, "in files rebuilt since"),
        (s.no_symbol, "without a symbol"),
        (s.bad_file, "in files that could not be parsed"),
    ] {
        if n > 0 {
            why.push(format!("{} {what}", units::count(n)));
        }
    }
    if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) }
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
        cgroups: Vec::new(),
        command,
        command_env,
        duration: None,
        ring_buffer_bytes: RecordOptions::DEFAULT_RING_BUFFER_BYTES,
        progress: true,
        command_line: std::env::args().collect(),
        usdt_binaries: Vec::new(),
        usdt: true,
        go: Default::default(),
        go_casgstatus: false,
        // The demo's flame graphs: where tasks ran, and where they waited.
        stacks: StackOptions { offcpu: true, wakeup: true, ..RecordOptions::DEFAULT_STACKS },
    })?;
    let report = load_report(&trace, &Filter::default())?;
    let text = report::text::render(&report, 30);
    let txt = dir.join("report.txt");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;
    let json = dir.join("report.json");
    let body = serde_json::to_vec_pretty(&report).context("encoding the report")?;
    std::fs::write(&json, body).with_context(|| format!("writing {}", json.display()))?;
    print!("{text}");
    // The heat maps that tell the workload's story: CFS's wait for every workload; for the
    // reference runtime also the runtime's queues, the time CFS stole from running tasks, and
    // the netpoller's parks; for plain threads their sleeps and epoll waits.
    let metrics: &[Metric] = if workload == "threads" {
        &[Metric::Runq, Metric::Sleep, Metric::Epoll]
    } else {
        &[Metric::Runq, Metric::TaskQueue, Metric::CfsStolen, Metric::Netpoll]
    };
    let mut maps = Vec::new();
    for &metric in metrics {
        let h = heatmap::build(&trace, &heatmap::Spec::new(metric))
            .with_context(|| format!("drawing the {} heat map of {}", metric.name(), trace.display()))?;
        if h.panels[0].grid.events == 0 {
            eprintln!("sched-trace demo: no {} events in this run: no heat map of them", metric.name());
            continue;
        }
        for (ext, body) in [("svg", heatmap::svg::render(&h).svg), ("html", heatmap::html::render(&h))] {
            let path = dir.join(format!("heatmap-{}.{ext}", metric.name()));
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
            maps.push(path.display().to_string());
        }
    }
    // Where each task (or thread) spent its CPU time, and where it waited.
    let mut flames = Vec::new();
    for kind in [FlameKind::OnCpu, FlameKind::OffCpu] {
        let flame = flamegraph::build(&trace, &flamegraph::Spec::new(kind))
            .with_context(|| format!("drawing the {} flame graph of {}", kind.name(), trace.display()))?;
        let mut svg = Vec::new();
        render_svg(&flame, &mut svg).context("drawing the flame graph")?;
        let path = dir.join(format!("flamegraph-{}.svg", kind.name()));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        flames.push(path.display().to_string());
    }
    eprintln!(
        "sched-trace demo: wrote {}, {}, {}, the heat maps {}, the flame graphs {} and the workload's own log {}",
        trace.display(),
        txt.display(),
        json.display(),
        maps.join(", "),
        flames.join(", "),
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

/// Which stacks `--stacks` asks for.
#[derive(Clone, Copy, Debug, Default)]
struct StackKinds {
    oncpu: bool,
    offcpu: bool,
    wakeup: bool,
}

fn parse_stacks(s: &str) -> Result<StackKinds, String> {
    let mut k = StackKinds::default();
    for part in s.split(',').map(str::trim) {
        match part {
            "oncpu" => k.oncpu = true,
            "offcpu" => k.offcpu = true,
            "wakeup" => k.wakeup = true,
            "none" => {}
            other => return Err(format!("`{other}` is not a kind of stack (oncpu, offcpu, wakeup, none)")),
        }
    }
    Ok(k)
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
