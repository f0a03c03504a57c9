//! `sched-trace record`: the only part that talks to the kernel.
//!
//! Load and attach the probes, drain the ring buffer with tokio (`AsyncFd` on its fd), and hand
//! records to the sink thread that writes the trace file. Stop on the command's exit, when every
//! traced PID is gone, after a duration, or on SIGINT/SIGTERM, and always leave a complete file.

pub mod cgroups;
pub mod go;
pub mod host;
pub mod kernel_btf;
pub mod mappings;
pub mod privileges;
pub mod probes;
pub mod procfs;
pub mod sink;
pub mod target;
pub mod tracefs;
pub mod usdt;

use std::{
    ffi::OsString,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use sched_trace_abi::ABI_VERSION;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::trace::{
    DropCounters, EndInfo, TraceError, TraceInfo, TraceTarget, TraceWriter,
    event::{peek_ids, peek_kind_size},
};
use mappings::MappingScanner;
pub use probes::StackOptions;
use probes::{EpollOffsets, KernelCounters, MmapOffsets, ProbeConfig, Probes};
use sink::{SinkMsg, SinkStats};
use target::{ExitStatus, LaunchedCommand, ProcessExit};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "sched-trace record needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its kernel \
         probes, and this process lacks {}. Run it as root (sudo sched-trace record ...), or \
         grant them: sudo setcap cap_bpf,cap_perfmon,cap_sys_admin+ep <path to sched-trace>",
         .missing.join(" and ")
    )]
    MissingCapability { missing: Vec<&'static str> },
    #[error("cannot check this process's capabilities: {0}")]
    Capabilities(#[source] std::io::Error),
    #[error("{what}")]
    Tracefs {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Btf { what: String },
    #[error("{what}")]
    Probe {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("cannot watch PID {pid}: {source}")]
    Watch {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingBufferSize(u32),
    #[error("draining the ring buffer: {0}")]
    Drain(#[source] std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Write(Box<WriteFailed>),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Usdt(#[from] usdt::UsdtError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("{0}")]
    Options(String),
}

/// Writing the trace failed (a full disk): what the file holds and what it lacks.
#[derive(Debug, thiserror::Error)]
#[error(
    "writing the trace failed after {events} events: {error}. Events recorded after {written_s:.3} s \
     into the recording are not in the file ({unwritten} of them were received and could not be \
     written); {path} holds everything before that ({bytes} bytes), {closing}"
)]
pub struct WriteFailed {
    pub path: PathBuf,
    pub events: u64,
    /// Seconds into the recording of the last event written.
    pub written_s: f64,
    pub unwritten: u64,
    pub bytes: u64,
    /// Whether the file got an end marker saying so.
    pub closing: &'static str,
    /// Its message is part of this one's (so it is not a `source` too).
    pub error: TraceError,
}

/// What to record and where.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub output: PathBuf,
    /// Processes to trace; with no PID, command or cgroup, the whole system.
    pub pids: Vec<u32>,
    /// Cgroup directories whose processes (and those of the cgroups below) to trace.
    pub cgroups: Vec<PathBuf>,
    /// A command to start and trace with all its descendants.
    pub command: Vec<OsString>,
    /// Variables added to the command's environment.
    pub command_env: Vec<(OsString, OsString)>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Kernel ring buffer size in bytes (a power of two).
    pub ring_buffer_bytes: u32,
    /// Say on stderr when the probes are attached and recording starts, and draw a live status
    /// line there when it is a terminal.
    pub progress: bool,
    /// The recorder's command line, stored in the trace.
    pub command_line: Vec<String>,
    /// Executables whose USDT probes to attach, besides those of the traced command or PIDs.
    pub usdt_binaries: Vec<PathBuf>,
    /// Attach the USDT probes of the traced executables (and of `usdt_binaries`).
    pub usdt: bool,
    /// How Go programs' goroutines are followed...
    pub go: go::GoLevel,
    /// ...and, at the full level, whether `runtime.casgstatus` is probed too.
    pub go_casgstatus: bool,
    /// Which stacks to capture (CPU samples, switch-outs, wake-ups).
    pub stacks: StackOptions,
}

impl RecordOptions {
    pub const DEFAULT_RING_BUFFER_BYTES: u32 = 32 << 20;
    /// CPU samples at 99 Hz (on every CPU, of the traced threads only); no off-CPU or wake-up
    /// stacks (a stack walk at every switch is not free: `--stacks offcpu` asks for them).
    pub const DEFAULT_STACKS: StackOptions =
        StackOptions { oncpu_hz: Some(99), offcpu: false, wakeup: false, map_entries: 16384 };
}

/// Why a recording stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    CommandExited(ExitStatus),
    PidsExited(Vec<u32>),
    Duration(Duration),
    Signal(i32),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::CommandExited(s) => write!(f, "the command exited ({s})"),
            StopReason::PidsExited(p) => {
                let p: Vec<String> = p.iter().map(u32::to_string).collect();
                write!(f, "every traced process exited (PID {})", p.join(", "))
            }
            StopReason::Duration(d) => write!(f, "the duration of {:.3} s elapsed", d.as_secs_f64()),
            StopReason::Signal(s) => write!(f, "{} received", signal_name(*s)),
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The outcome of a recording.
#[derive(Debug)]
pub struct RecordSummary {
    pub output: PathBuf,
    pub events: u64,
    pub bytes: u64,
    pub drops: DropCounters,
    pub elapsed: Duration,
    pub stop: StopReason,
    /// How the command ended, when one was recorded.
    pub command_status: Option<ExitStatus>,
}

impl RecordSummary {
    /// The exit code `sched-trace record` should end with: the command's, passed through, or
    /// 128 + signal when a signal stopped the recording.
    pub fn exit_code(&self) -> i32 {
        match (&self.command_status, &self.stop) {
            (Some(s), _) => s.shell_code(),
            (None, StopReason::Signal(s)) => 128 + s,
            _ => 0,
        }
    }
}

/// Records until a stop condition. Nothing stays attached when this returns, on any path.
pub async fn record(opts: RecordOptions) -> Result<RecordSummary, RecordError> {
    check_preconditions(&opts)?;
    let kernel = KernelFacts::read()?;
    // The cgroup hierarchies, and the cgroups to trace (filtered in the kernel).
    let hierarchies = cgroups::Hierarchies::read();
    let filter_cgroups =
        opts.cgroups.iter().map(|path| hierarchies.filter_key(path)).collect::<Result<Vec<_>, _>>()?;
    if !filter_cgroups.is_empty() && kernel.cgroups.is_none() {
        return Err(RecordError::Btf {
            what: "this kernel's BTF lacks the cgroup structures `record --cgroup` reads \
                   (task_struct.cgroups, css_set, cgroup, kernfs_node)"
                .into(),
        });
    }

    // Targets. A command is forked now and held before exec until the probes are attached; if
    // anything below fails, dropping it makes the child exit without running the command.
    let mut command = if opts.command.is_empty() {
        None
    } else {
        Some(LaunchedCommand::spawn(&opts.command, &opts.command_env)?)
    };
    let mut watched = Vec::new();
    for &pid in &opts.pids {
        let watch = ProcessExit::watch(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => RecordError::NoSuchProcess { pid },
            _ => RecordError::Watch { pid, source },
        })?;
        watched.push((pid, watch));
    }
    let target = match &command {
        Some(c) => TraceTarget::Command { argv: c.argv().to_vec(), pid: c.pid() },
        None if !opts.pids.is_empty() => TraceTarget::Pids { pids: opts.pids.clone() },
        None if !opts.cgroups.is_empty() => {
            TraceTarget::Cgroups { paths: opts.cgroups.iter().map(|p| p.display().to_string()).collect() }
        }
        None => TraceTarget::SystemWide,
    };
    let filter_pids: Vec<u32> = command.as_ref().map(|c| vec![c.pid()]).unwrap_or_else(|| opts.pids.clone());

    // User-level probes of the traced executables.
    let mut binaries: Vec<PathBuf> = command.iter().map(|c| c.program().to_path_buf()).collect();
    binaries.extend(opts.pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/exe"))));
    binaries.extend(opts.usdt_binaries.iter().cloned());
    let mut usdt = UsdtCatalog::new(opts.usdt, opts.go_casgstatus, &kernel);
    let mut skipped = Vec::new();
    let initial_probes = usdt.add(&binaries, &mut skipped);
    // Go programs among the targets: their goroutines are read at every switch-out.
    let mut go_programs = go::GoPrograms::default();
    let mut go_unsupported = Vec::new();
    let mut go_layouts = Vec::new();
    // The full level's probes, in the probe table (attached with the USDT probes).
    let mut go_probes = Vec::new();
    // The processes there when recording starts: the command, the PIDs, or those of the traced
    // cgroups or the whole system (processes that start later are looked at when they exec or
    // move into a traced cgroup).
    let running_at_start: Vec<u32> = if command.is_some() || !opts.pids.is_empty() {
        opts.pids.clone()
    } else if opts.cgroups.is_empty() {
        procfs::all_pids()
    } else {
        opts.cgroups.iter().flat_map(|d| cgroups::processes_under(d)).collect()
    };
    let go_targets = command.iter().map(|c| (c.pid(), c.program().to_path_buf())).chain(
        running_at_start
            .iter()
            .filter(|&&p| p != std::process::id())
            .map(|&p| (p, PathBuf::from(format!("/proc/{p}/exe")))),
    );
    for (pid, path) in go_targets.filter(|_| opts.go != go::GoLevel::Off) {
        match go::inspect(pid, &path) {
            go::Inspected::NotGo => {}
            go::Inspected::Unsupported(info) => go_unsupported.push(info),
            go::Inspected::Go(binary) => {
                let fsbase = kernel.task.fsbase.is_some();
                let adopted = usdt.adopt_go(&mut go_programs, pid, binary, opts.go, fsbase, &mut skipped);
                go_probes.push(adopted.probes);
                go_layouts.extend(adopted.identity.map(|layout| (pid, layout)));
            }
        }
    }

    // The file first: an unwritable path fails before anything is loaded into the kernel.
    let mut info = trace_info(&opts, target, &kernel);
    let info_cpus = info.online_cpus.clone();
    if let Some(c) = &command
        && c.wait_until_parked(Duration::from_secs(1))
    {
        info.asleep_at_start.push(c.pid());
    }
    info.user_probes = usdt.table.clone();
    info.skipped_user_probes = skipped;
    let start_ns = info.start_ns;
    let system_wide = matches!(info.target, TraceTarget::SystemWide);
    let writer = TraceWriter::create(&opts.output, &info)?;
    let unfinished = UnfinishedFile(Some(opts.output.clone()));

    let config = ProbeConfig {
        filter_pids: !system_wide,
        follow_children: command.is_some(),
        filter_cgroups: !filter_cgroups.is_empty(),
        cgroups: kernel.cgroups,
        throttle_count: kernel.throttle_count,
        self_pid: std::process::id(),
        ring_buffer_bytes: opts.ring_buffer_bytes,
        filter_table_entries: 16384,
        task: kernel.task,
        orig_ax: kernel.orig_ax,
        ip: kernel.pt_regs.get("ip").copied(),
        pt_regs_size: kernel.pt_regs_size,
        epoll: kernel.epoll,
        mmap: kernel.mmap,
        stacks: opts.stacks,
    };
    let mut probes = Probes::load(&config)?;
    for &pid in &filter_pids {
        probes.trace_pid(pid)?;
    }
    for &key in &filter_cgroups {
        probes.trace_cgroup(key)?;
    }
    for (pid, layout) in go_layouts {
        probes.follow_goroutines(pid, layout)?;
    }
    let ring = probes.take_events()?;
    let counters = probes.take_counters()?;
    probes.attach_all()?;
    usdt.attach(&mut probes, initial_probes)?;
    for added in go_probes {
        usdt.attach(&mut probes, added)?;
    }
    if let Some(hz) = opts.stacks.oncpu_hz {
        probes.attach_sampling(&info_cpus, hz)?;
    }
    // The stack map outlives the programs: it is read once they are detached.
    let stack_map = if opts.stacks.any() { Some(probes.take_stacks()?) } else { None };
    // SAFETY: the ring buffer owns its fd, which stays open and unchanged while the AsyncFd
    // owns the ring buffer.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| RecordError::Drain(e.into()))?;

    // The processes already in the traced cgroups: the probes take in those created or moved
    // in from now on, and each of these gets a record saying it is traced from the start.
    let mut cgroup_pids: Vec<u32> = opts.cgroups.iter().flat_map(|d| cgroups::processes_under(d)).collect();
    cgroup_pids.sort_unstable();
    cgroup_pids.dedup();
    cgroup_pids.retain(|&p| p != std::process::id());
    for &pid in &cgroup_pids {
        probes.trace_pid(pid)?;
    }
    let traced_at_start: Vec<u32> = if system_wide {
        procfs::all_pids()
    } else {
        filter_pids.iter().chain(&cgroup_pids).copied().collect()
    };
    let initial_tasks: Vec<_> =
        traced_at_start.iter().flat_map(|&p| procfs::scan_process(p, start_ns)).collect();
    let mut cgroup_watch = cgroups::CgroupWatch::new(hierarchies);
    for &pid in &traced_at_start {
        cgroup_watch.scan_process(pid, start_ns);
    }
    let stats = Arc::new(SinkStats::default());
    let (tx, rx) = mpsc::channel::<SinkMsg>(64);
    let sink = {
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("sched-trace-sink".into())
            .spawn(move || sink::run(writer, rx, stats))
            .map_err(|e| RecordError::Trace(TraceError::io(&opts.output, e)))?
    };
    unfinished.keep();
    // The channel is empty: this cannot fail for lack of room, only if the sink already died,
    // which the join below reports.
    let _ = tx.try_send(SinkMsg::Tasks(initial_tasks));
    for info in go_unsupported {
        let _ = tx.try_send(SinkMsg::Go(go_programs.unsupported(info)));
    }
    if let Some(table) = go_programs.table(true) {
        let _ = tx.try_send(SinkMsg::Go(table));
    }
    if let Some(table) = cgroup_watch.take(start_ns) {
        let _ = tx.try_send(SinkMsg::Cgroups(table));
    }

    if let Some(c) = command.as_mut() {
        c.release()?;
    }
    if opts.progress {
        let what = match &command {
            Some(c) => format!("PID {} and its descendants", c.pid()),
            None if !opts.pids.is_empty() => {
                let pids: Vec<String> = opts.pids.iter().map(u32::to_string).collect();
                format!("PID {}", pids.join(", "))
            }
            None if !opts.cgroups.is_empty() => {
                let dirs: Vec<String> = opts.cgroups.iter().map(|d| d.display().to_string()).collect();
                format!("the processes of cgroup {} and below", dirs.join(", "))
            }
            None => "the whole system".to_string(),
        };
        eprintln!("sched-trace: recording {what} into {} (Ctrl-C to stop)", opts.output.display());
    }
    let started = Instant::now();
    let mut session = Session {
        ring,
        go_level: opts.go,
        counters,
        drained: Drained {
            received: [0; DropCounters::SLOTS],
            batch: Vec::with_capacity(BATCH_BYTES * 2),
            malformed: 0,
            mappings: opts.stacks.any().then(MappingScanner::default),
            stack_kinds: stack_kinds(&opts.stacks),
            go: go_programs,
            go_checked: Default::default(),
            cgroups: cgroup_watch,
            stop_ns: u64::MAX,
        },
        tx,
        status: StatusLine::new(opts.progress && std::io::stderr().is_terminal()),
        stats: stats.clone(),
        started,
    };
    for &pid in &cgroup_pids {
        let flags = sched_trace_abi::cgroup_flags::SCAN | sched_trace_abi::cgroup_flags::FILTER_IN;
        let none = [(0, 0); sched_trace_abi::cgroup_slot::COUNT];
        session.drained.batch.extend(crate::trace::synthetic::cgroup(start_ns, pid, pid, flags, none));
    }
    let run = session.run(&opts, &mut probes, &mut usdt, command.as_mut(), &mut watched).await;
    // When recording stopped (detaching the probes below takes a while: uprobes wait for RCU).
    let stopped_ns = host::monotonic_ns();

    // Detach first, then take what the kernel still holds: what was recorded before the stop.
    // Detaching takes a while and the programs go one by one, so records after it would show a
    // trace with some probes and not others (wake-ups without their switches).
    session.drained.stop_ns = stopped_ns;
    drop(probes);
    session.drain_now();
    let final_drops = session.losses(true);
    let _ = session.flush().await;
    if let Some(table) = session.drained.go.table(true) {
        let _ = session.send(SinkMsg::Go(table)).await;
    }
    if let Some(table) = session.drained.cgroups.take(stopped_ns) {
        let _ = session.send(SinkMsg::Cgroups(table)).await;
    }
    if let Some(map) = &stack_map {
        session.send_stacks(map).await;
    }
    if let Ok(d) = &final_drops {
        let _ = session.tx.send(SinkMsg::Drops(d.clone())).await;
    }
    session.status.clear();
    drop(session.tx);
    let out = sink.join().map_err(|_| TraceError::Encode("the trace writer thread panicked".into()))?;
    if let Some(error) = out.failure {
        // Everything the kernel handed over after the last whole chunk is lost: say where the
        // file ends, in the error and in the file's own end marker.
        let received: u64 = session.drained.received.iter().sum();
        let failure = crate::trace::WriteFailure {
            error: error.to_string(),
            last_written_ns: out.last_written_ns,
            unwritten_events: received.saturating_sub(out.events),
        };
        let end = EndInfo {
            end_ns: stopped_ns,
            events: out.events,
            stop_reason: format!("writing the trace failed: {error}"),
            write_failure: Some(failure.clone()),
        };
        let closed = out.writer.close_after_failure(&final_drops.unwrap_or_default(), &end);
        return Err(RecordError::Write(Box::new(WriteFailed {
            path: opts.output.clone(),
            events: out.events,
            written_s: out.last_written_ns.saturating_sub(start_ns) as f64 / 1e9,
            unwritten: failure.unwritten_events,
            bytes: closed
                .as_ref()
                .copied()
                .unwrap_or_else(|_| std::fs::metadata(&opts.output).map(|m| m.len()).unwrap_or(0)),
            closing: if closed.is_ok() {
                "closed with an end marker that says so"
            } else {
                "without an end marker (this file system cannot keep room for one)"
            },
            error,
        })));
    }
    let (stop, command_status) = run?;
    let drops = final_drops?;
    let end = EndInfo {
        end_ns: stopped_ns,
        events: out.events,
        stop_reason: stop.to_string(),
        write_failure: None,
    };
    let events = out.events;
    let bytes = out.writer.finish(&end).map_err(RecordError::Trace)?;
    Ok(RecordSummary {
        output: opts.output.clone(),
        events,
        bytes,
        drops,
        elapsed: started.elapsed(),
        stop,
        command_status,
    })
}

/// Checks what can be checked before touching the kernel or the file system.
fn check_preconditions(opts: &RecordOptions) -> Result<(), RecordError> {
    if !opts.cgroups.is_empty() && (!opts.pids.is_empty() || !opts.command.is_empty()) {
        return Err(RecordError::Options(
            "--cgroup chooses what to trace by itself: it cannot be combined with a command or --pid".into(),
        ));
    }
    let missing = privileges::missing_capabilities().map_err(RecordError::Capabilities)?;
    if !missing.is_empty() {
        return Err(RecordError::MissingCapability { missing });
    }
    let rb = opts.ring_buffer_bytes;
    if !rb.is_power_of_two() || rb < 4096 {
        return Err(RecordError::RingBufferSize(rb));
    }
    for &pid in &opts.pids {
        if !target::process_exists(pid) {
            return Err(RecordError::NoSuchProcess { pid });
        }
    }
    Ok(())
}

/// What the probes need to know about the running kernel.
struct KernelFacts {
    task: kernel_btf::TaskOffsets,
    epoll: EpollOffsets,
    mmap: MmapOffsets,
    /// Offsets of the `struct pt_regs` fields USDT operands name.
    pt_regs: std::collections::HashMap<usdt::PtRegsField, u32>,
    /// Offset of `pt_regs.orig_ax` (tells interrupts from syscalls).
    orig_ax: Option<u32>,
    /// `sizeof(struct pt_regs)`.
    pt_regs_size: Option<u32>,
    cgroups: Option<kernel_btf::CgroupOffsets>,
    throttle_count: Option<u32>,
}

impl KernelFacts {
    fn read() -> Result<Self, RecordError> {
        let tracefs_root = tracefs::ensure_mounted()?;
        let btf = kernel_btf::KernelBtf::load()?;
        for (tp, params) in probes::RAW_TRACEPOINT_PROTOTYPES {
            btf.check_tracepoint(tp, params)?;
        }
        let pt_regs = usdt::PT_REGS_FIELDS
            .iter()
            .map(|f| Ok((*f, btf.pt_regs_offset(f)?)))
            .collect::<Result<_, RecordError>>()?;
        let orig_ax = btf.pt_regs_offset("orig_ax").ok();
        let pt_regs_size = btf.pt_regs_size().ok();
        let mmap = MmapOffsets {
            len: tracefs::field_offset(&tracefs_root, "syscalls", "sys_enter_mmap", "len")?,
            prot: tracefs::field_offset(&tracefs_root, "syscalls", "sys_enter_mmap", "prot")?,
            ret: tracefs::field_offset(&tracefs_root, "syscalls", "sys_exit_mmap", "ret")?,
        };
        Ok(KernelFacts {
            task: btf.task_offsets()?,
            epoll: epoll_offsets(&tracefs_root)?,
            mmap,
            pt_regs,
            orig_ax,
            pt_regs_size,
            cgroups: btf.cgroup_offsets(),
            throttle_count: btf.cfs_rq_throttle_count(),
        })
    }
}

/// A file, by device and inode when it can be looked at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FileId {
    Inode((u64, u64)),
    Path(PathBuf),
}

impl FileId {
    /// The file at `path`: by device and inode, by path when it cannot be looked at.
    fn of(path: &Path) -> FileId {
        std::fs::metadata(path)
            .map(|m| {
                FileId::Inode((
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                ))
            })
            .unwrap_or_else(|_| FileId::Path(path.to_path_buf()))
    }
}

/// What following one Go process added (see `UsdtCatalog::adopt_go`).
struct GoAdopted {
    /// Probe-table entries to attach (the full level's).
    probes: std::ops::Range<usize>,
    /// The layout the kernel reads its goroutines with (the identity level).
    identity: Option<sched_trace_abi::GoIdentity>,
}

/// The USDT probes a recording attaches, growing as traced processes exec new executables: the
/// trace's probe table, and how the kernel reads each probe's arguments.
struct UsdtCatalog {
    enabled: bool,
    /// Probe Go's `casgstatus` at the full level.
    go_casgstatus: bool,
    /// Executables already inspected...
    seen: std::collections::HashSet<FileId>,
    /// ...and those whose Go scheduler probes were added.
    go_seen: std::collections::HashSet<FileId>,
    table: Vec<crate::trace::UserProbe>,
    specs: Vec<sched_trace_abi::UsdtSpec>,
    pt_regs: std::collections::HashMap<usdt::PtRegsField, u32>,
}

impl UsdtCatalog {
    fn new(enabled: bool, go_casgstatus: bool, kernel: &KernelFacts) -> Self {
        UsdtCatalog {
            enabled,
            go_casgstatus,
            seen: Default::default(),
            go_seen: Default::default(),
            table: Vec::new(),
            specs: Vec::new(),
            pt_regs: kernel.pt_regs.clone(),
        }
    }

    /// Reads the probes of the executables not seen yet, adds those that can be attached, and
    /// returns the range of table indexes added. Probes that cannot be attached, and executables
    /// whose probes cannot be read (a script, a 32-bit program, a file gone), are reported on
    /// stderr and listed in `skipped`: they are traced with the kernel probes all the same.
    fn add(&mut self, binaries: &[PathBuf], skipped: &mut Vec<String>) -> std::ops::Range<usize> {
        let start = self.table.len();
        if !self.enabled {
            return start..start;
        }
        for binary in binaries {
            // /proc/PID/exe of a process whose executable was deleted still opens (and attaches):
            // keep that path when the link's target is gone.
            let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.clone());
            // The same file under two names (two PIDs' /proc/PID/exe) is probed once.
            if !self.seen.insert(FileId::of(&binary)) {
                continue;
            }
            let probes = match usdt::read_probes(&binary) {
                Ok(p) => p,
                Err(e) => {
                    let why = match &e {
                        usdt::UsdtError::Elf { what, .. } => what.clone(),
                        usdt::UsdtError::Io { source, .. } => source.to_string(),
                    };
                    // A process that exec'd and exited before its executable could be looked at
                    // is only listed; anything else is said.
                    let vanished = matches!(&e, usdt::UsdtError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound)
                        && binary.starts_with("/proc");
                    if !vanished {
                        eprintln!(
                            "sched-trace: the USDT probes of {} are not read: {why}; it is traced with the kernel probes",
                            binary.display()
                        );
                    }
                    skipped.push(format!("{}: USDT probes not read: {why}", binary.display()));
                    continue;
                }
            };
            for p in probes {
                let label = format!("USDT probe {}:{} in {}", p.provider, p.name, binary.display());
                let spec = if p.semaphore != 0 {
                    Err("it is guarded by a semaphore, which sched-trace does not set".to_string())
                } else if self.table.len() >= sched_trace_abi::MAX_USDT_PROBES as usize {
                    Err(format!("more than {} probes", sched_trace_abi::MAX_USDT_PROBES))
                } else {
                    usdt::parse_args(&p.arg_string).map_err(|e| e.to_string()).and_then(|args| {
                        usdt::kernel_spec(&args, |r| self.pt_regs.get(r).copied()).map_err(str::to_string)
                    })
                };
                match spec {
                    Ok(spec) => {
                        self.table.push(crate::trace::UserProbe {
                            index: self.table.len() as u32,
                            binary: binary.display().to_string(),
                            provider: p.provider,
                            name: p.name,
                            file_offset: p.file_offset,
                            args: p.arg_string,
                            reasons: Default::default(),
                        });
                        self.specs.push(spec);
                    }
                    Err(why) => {
                        eprintln!("sched-trace: warning: {label} is not attached: {why}");
                        skipped.push(format!("{label}: {why}"));
                    }
                }
            }
        }
        start..self.table.len()
    }

    /// Follows Go process `pid` running `binary` at `level`: adds its probes to the table (the
    /// full level's scheduler probes, or the identity level's goroutine records), and returns
    /// the ones to attach and the layout the kernel reads goroutines with (identity level).
    fn adopt_go(
        &mut self,
        go: &mut go::GoPrograms,
        pid: u32,
        binary: std::sync::Arc<sched_trace_binaries::go::GoBinary>,
        level: go::GoLevel,
        fsbase_known: bool,
        skipped: &mut Vec<String>,
    ) -> GoAdopted {
        let probes = if level == go::GoLevel::Full {
            self.push_go_probes(&binary, go, skipped)
        } else {
            self.table.len()..self.table.len()
        };
        let index = self.table.len() as u32;
        let identity = go.follow_at(pid, binary, index, fsbase_known, level).map(|(probe, layout)| {
            self.push_runtime_probe(probe);
            layout
        });
        GoAdopted { probes, identity }
    }

    /// Adds the full level's probes of Go `binary` (once per executable) and returns their
    /// range of table indexes, to attach; a probe whose operands cannot be read is skipped
    /// and said.
    fn push_go_probes(
        &mut self,
        binary: &sched_trace_binaries::go::GoBinary,
        go: &mut go::GoPrograms,
        skipped: &mut Vec<String>,
    ) -> std::ops::Range<usize> {
        let start = self.table.len();
        if !self.go_seen.insert(FileId::of(Path::new(&binary.path))) {
            return start..start;
        }
        for why in go::missing_sites(binary, self.go_casgstatus) {
            eprintln!("sched-trace: warning: {}: Go probe {why}: not attached", binary.path);
            skipped.push(format!("{}: Go probe {why}", binary.path));
        }
        for (mut probe, args) in go::full_probes(binary, self.go_casgstatus) {
            let mut spec = sched_trace_abi::UsdtSpec { nargs: args.len() as u32, ..Default::default() };
            let read = args.iter().zip(spec.args.iter_mut()).try_for_each(|(a, slot)| {
                *slot = a.kernel_arg(|r| self.pt_regs.get(r).copied()).ok_or("an argument it cannot read")?;
                Ok::<_, &str>(())
            });
            let spec = read.map(|()| spec).map_err(str::to_string);
            match spec {
                Ok(spec) if self.table.len() < sched_trace_abi::MAX_USDT_PROBES as usize => {
                    probe.index = self.table.len() as u32;
                    if matches!(probe.name.as_str(), "execute" | "newproc") {
                        go.names_start_pcs_of(probe.index);
                    }
                    self.table.push(probe);
                    self.specs.push(spec);
                }
                Ok(_) => skipped.push(format!(
                    "go:{}: more than {} probes",
                    probe.name,
                    sched_trace_abi::MAX_USDT_PROBES
                )),
                Err(why) => {
                    eprintln!("sched-trace: warning: Go probe {} is not attached: {why}", probe.name);
                    skipped.push(format!("go:{}: {why}", probe.name));
                }
            }
        }
        start..self.table.len()
    }

    /// Adds the probe-table entry of a runtime adapter's records (no USDT probe to attach).
    fn push_runtime_probe(&mut self, probe: crate::trace::UserProbe) {
        self.table.push(probe);
        self.specs.push(sched_trace_abi::UsdtSpec::default());
    }

    /// Attaches the probes of `added` (a range [`Self::add`] returned).
    fn attach(&self, probes: &mut Probes, added: std::ops::Range<usize>) -> Result<(), RecordError> {
        for (probe, spec) in self.table[added.clone()].iter().zip(&self.specs[added]) {
            let label = format!("{}:{}", probe.provider, probe.name);
            probes.attach_usdt(probe.index, Path::new(&probe.binary), probe.file_offset, *spec, &label)?;
        }
        Ok(())
    }
}

fn trace_info(opts: &RecordOptions, target: TraceTarget, kernel: &KernelFacts) -> TraceInfo {
    let (hostname, kernel_release) = host::uname();
    let (possible_cpus, online_cpus) = host::cpus();
    let (realtime_offset_ns, realtime_offset_error_ns) = host::realtime_offset();
    TraceInfo {
        abi_version: ABI_VERSION,
        recorder: format!("sched-trace {}", env!("CARGO_PKG_VERSION")),
        hostname,
        kernel_release,
        possible_cpus,
        online_cpus,
        clock: "CLOCK_MONOTONIC".into(),
        realtime_offset_ns,
        realtime_offset_error_ns,
        start_ns: host::monotonic_ns(),
        command_line: opts.command_line.clone(),
        recorder_pid: std::process::id(),
        target,
        ring_buffer_bytes: opts.ring_buffer_bytes as u64,
        probes: probes::attach_points(),
        task_fields: kernel.task.available(),
        user_probes: Vec::new(),
        skipped_user_probes: Vec::new(),
        asleep_at_start: Vec::new(),
        stacks: opts.stacks.any().then_some(crate::trace::format::StackCapture {
            oncpu_hz: opts.stacks.oncpu_hz,
            offcpu: opts.stacks.offcpu,
            wakeup: opts.stacks.wakeup,
            map_entries: opts.stacks.map_entries,
        }),
    }
}

/// Removes a trace file that was created but never got a recording (setup failed after it).
struct UnfinishedFile(Option<PathBuf>);

impl UnfinishedFile {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for UnfinishedFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Field offsets of the epoll syscall tracepoints; the three wait calls must agree.
fn epoll_offsets(root: &std::path::Path) -> Result<EpollOffsets, RecordError> {
    let mut found: Option<EpollOffsets> = None;
    for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
        let enter = format!("sys_enter_{call}");
        let exit = format!("sys_exit_{call}");
        let o = EpollOffsets {
            epfd: tracefs::field_offset(root, "syscalls", &enter, "epfd")?,
            maxevents: tracefs::field_offset(root, "syscalls", &enter, "maxevents")?,
            timeout: tracefs::field_offset(root, "syscalls", &enter, "timeout")?,
            ret: tracefs::field_offset(root, "syscalls", &exit, "ret")?,
        };
        match found {
            None => found = Some(o),
            Some(f) if f == o => {}
            Some(f) => {
                return Err(RecordError::Tracefs {
                    what: format!("the epoll tracepoints disagree on their layout ({f:?} vs {call}: {o:?})"),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
        }
    }
    found.ok_or_else(|| RecordError::Tracefs {
        what: "no epoll tracepoints".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Records are handed to the sink in batches of about this size...
const BATCH_BYTES: usize = 256 << 10;
/// ...or at least this often; the ring buffer is drained this often too (the kernel wakes the
/// reader early only when an eighth of the ring buffer is waiting).
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// After the command exits, keep draining this long so its last switches are in the trace.
/// How long into a recording the Go processes' layouts are checked on the live process (a
/// launched command needs a moment to start its runtime).
/// How often the `cpu.stat` of cgroups with a CPU quota is read: a tenth of the default
/// period (100 ms), to place each throttled stretch within its period.
const THROTTLE_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
const GO_CHECK_AFTER: Duration = Duration::from_millis(200);
const EXIT_GRACE: Duration = Duration::from_millis(50);
/// After forwarding a signal to the command, wait this long for it to exit.
const SIGNAL_GRACE: Duration = Duration::from_secs(3);

struct Session {
    ring: AsyncFd<RingBuf<MapData>>,
    go_level: go::GoLevel,
    counters: KernelCounters,
    /// Records drained, per kind.
    drained: Drained,
    tx: mpsc::Sender<SinkMsg>,
    status: StatusLine,
    stats: Arc<SinkStats>,
    started: Instant,
}

impl Session {
    /// Drains until a stop condition; returns why it stopped and the command's status.
    async fn run(
        &mut self,
        opts: &RecordOptions,
        probes: &mut Probes,
        usdt: &mut UsdtCatalog,
        mut command: Option<&mut LaunchedCommand>,
        watched: &mut Vec<(u32, ProcessExit)>,
    ) -> Result<(StopReason, Option<ExitStatus>), RecordError> {
        let mut sigint = signal(SignalKind::interrupt()).map_err(RecordError::Signals)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(RecordError::Signals)?;
        let mut tick = tokio::time::interval(BATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut throttle_tick = tokio::time::interval(THROTTLE_SAMPLE_INTERVAL);
        throttle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_status = Instant::now();
        let deadline = opts.duration.map(|d| self.started + d);
        let mut exited_pids = Vec::new();
        let all_pids: Vec<u32> = watched.iter().map(|(p, _)| *p).collect();
        // Set once a stop condition is met; draining continues until `stop_at`.
        let mut stopping: Option<(StopReason, Instant)> = None;
        let mut command_status: Option<ExitStatus> = None;

        loop {
            if let Some((_, at)) = &stopping
                && Instant::now() >= *at
            {
                break;
            }
            let stop_at = stopping.as_ref().map(|(_, at)| *at);
            let waiting_for_command = command.is_some() && command_status.is_none();
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.map_err(RecordError::Drain)?;
                    let execs = drain(guard.get_inner_mut(), &mut self.drained);
                    guard.clear_ready();
                    self.attach_new_executables(&execs, probes, usdt).await?;
                    self.scan_mappings().await?;
                    if self.drained.batch.len() >= BATCH_BYTES {
                        self.flush().await?;
                    }
                }
                _ = tick.tick() => {
                    // The kernel wakes the reader only when much is waiting: drain on the tick.
                    let execs = drain(self.ring.get_mut(), &mut self.drained);
                    self.attach_new_executables(&execs, probes, usdt).await?;
                    self.flush().await?;
                    self.scan_mappings().await?;
                    self.check_go_programs(probes).await?;
                    if let Some(table) = self.drained.cgroups.take(host::monotonic_ns()) {
                        self.send(SinkMsg::Cgroups(table)).await?;
                    }
                    if last_status.elapsed() >= Duration::from_secs(1) {
                        last_status = Instant::now();
                        if let Ok(d) = self.losses(false) {
                            let received = self.drained.received.iter().sum();
                            self.status.update(self.started.elapsed(), received, d.lost_records(), self.stats.bytes.load(Ordering::Relaxed));
                            self.send(SinkMsg::Drops(d)).await?;
                        }
                    }
                }
                _ = throttle_tick.tick(), if self.drained.cgroups.sampling() => {
                    self.drained.cgroups.sample(host::monotonic_ns());
                }
                status = wait_command(command.as_deref_mut()), if waiting_for_command => {
                    let status = status?;
                    command_status = Some(status);
                    if stopping.is_none() {
                        stopping = Some((StopReason::CommandExited(status), Instant::now() + EXIT_GRACE));
                    } else if let Some((_, at)) = stopping.as_mut() {
                        *at = (*at).min(Instant::now() + EXIT_GRACE);
                    }
                }
                i = first_exit(watched), if !watched.is_empty() => {
                    let (pid, _) = watched.remove(i);
                    probes.untrace_pid(pid);
                    exited_pids.push(pid);
                    if watched.is_empty() && stopping.is_none() {
                        stopping = Some((StopReason::PidsExited(all_pids.clone()), Instant::now() + EXIT_GRACE));
                    }
                }
                _ = sleep_until_opt(deadline), if stopping.is_none() => {
                    let d = opts.duration.unwrap_or_default();
                    stopping = Some((StopReason::Duration(d), Instant::now()));
                }
                _ = sigint.recv() => {
                    self.on_signal(libc::SIGINT, &mut stopping, command.as_deref(), command_status.is_some());
                }
                _ = sigterm.recv() => {
                    self.on_signal(libc::SIGTERM, &mut stopping, command.as_deref(), command_status.is_some());
                }
                _ = sleep_until_opt(stop_at) => {}
            }
        }
        let stop = stopping.map(|(r, _)| r).unwrap_or(StopReason::Signal(libc::SIGTERM));
        // The duration ran out (or a signal stopped us) before the command exited: the command
        // keeps running untraced, and its exit code is still passed through.
        if command_status.is_none()
            && let Some(c) = command
        {
            self.status.clear();
            eprintln!("sched-trace: recording stopped; waiting for the command (PID {}) to exit", c.pid());
            command_status = Some(c.wait().await?);
        }
        Ok((stop, command_status))
    }

    fn on_signal(
        &mut self,
        sig: i32,
        stopping: &mut Option<(StopReason, Instant)>,
        command: Option<&LaunchedCommand>,
        command_done: bool,
    ) {
        match (stopping.as_mut(), command) {
            // First signal with a live command: pass it on and give the command time to exit,
            // so its last moments are recorded.
            (None, Some(c)) if !command_done => {
                c.signal(sig);
                *stopping = Some((StopReason::Signal(sig), Instant::now() + SIGNAL_GRACE));
            }
            (None, _) => *stopping = Some((StopReason::Signal(sig), Instant::now())),
            // A second signal: stop now.
            (Some((_, at)), _) => *at = Instant::now(),
        }
    }

    /// Checks the runtime layout of Go processes on the live process once their runtime runs
    /// (a fifth of a second into the recording), and writes the names of the goroutines' start
    /// functions seen so far.
    async fn check_go_programs(&mut self, probes: &mut Probes) -> Result<(), RecordError> {
        if self.drained.go.is_empty() {
            return Ok(());
        }
        let mut changed = false;
        if self.started.elapsed() >= GO_CHECK_AFTER {
            for pid in self.drained.go.pids() {
                if !self.drained.go_checked.insert(pid) {
                    continue;
                }
                changed = true;
                if let Some(Err(why)) = self.drained.go.check_live(pid) {
                    self.status.clear();
                    eprintln!("sched-trace: PID {pid}: {why}");
                    probes.forget_goroutines(pid)?;
                }
            }
        }
        if let Some(table) = self.drained.go.table(changed) {
            self.send(SinkMsg::Go(table)).await?;
        }
        Ok(())
    }

    /// Attaches the USDT probes of executables that traced processes just exec'd. Their first
    /// moments (before the attach) are not probed; the scheduler events are all there.
    async fn attach_new_executables(
        &mut self,
        exec_pids: &[u32],
        probes: &mut Probes,
        usdt: &mut UsdtCatalog,
    ) -> Result<(), RecordError> {
        if let Some(m) = self.drained.mappings.as_mut() {
            for &pid in exec_pids {
                m.changed(pid);
            }
        }
        for &pid in exec_pids {
            let exe = PathBuf::from(format!("/proc/{pid}/exe"));
            // The launched command's own exec: followed since before it.
            if self.go_level == go::GoLevel::Off || self.drained.go.follows(pid, &exe) {
                continue;
            }
            match go::inspect(pid, &exe) {
                go::Inspected::NotGo => {}
                go::Inspected::Unsupported(info) => {
                    let table = self.drained.go.unsupported(info);
                    self.send(SinkMsg::Go(table)).await?;
                }
                go::Inspected::Go(binary) => {
                    let mut skipped = Vec::new();
                    let fsbase = probes.fsbase_known();
                    let adopted =
                        usdt.adopt_go(&mut self.drained.go, pid, binary, self.go_level, fsbase, &mut skipped);
                    // The probe table first: it must precede the records of its probes.
                    let added = usdt.table[adopted.probes.start..].to_vec();
                    if !added.is_empty() || !skipped.is_empty() {
                        self.send(SinkMsg::Probes { added, skipped }).await?;
                    }
                    usdt.attach(probes, adopted.probes)?;
                    if let Some(layout) = adopted.identity {
                        probes.follow_goroutines(pid, layout)?;
                        self.drained.go_checked.remove(&pid);
                    }
                    if let Some(table) = self.drained.go.table(true) {
                        self.send(SinkMsg::Go(table)).await?;
                    }
                }
            }
        }
        if exec_pids.is_empty() || !usdt.enabled {
            return Ok(());
        }
        let binaries: Vec<PathBuf> =
            exec_pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/exe"))).collect();
        let mut skipped = Vec::new();
        let added = usdt.add(&binaries, &mut skipped);
        if added.is_empty() && skipped.is_empty() {
            return Ok(());
        }
        usdt.attach(probes, added.clone())?;
        self.send(SinkMsg::Probes { added: usdt.table[added].to_vec(), skipped }).await
    }

    /// What was lost so far. `final_count`: the probes are detached and the ring buffer drained,
    /// so every submitted record must have been received.
    fn losses(&self, final_count: bool) -> Result<DropCounters, RecordError> {
        let mut unreceived = 0;
        if final_count {
            let submitted = self.counters.submitted()?;
            for (s, r) in submitted.iter().zip(&self.drained.received) {
                unreceived += s.saturating_sub(*r);
            }
        }
        Ok(DropCounters { per_cpu: self.counters.drops()?, malformed: self.drained.malformed, unreceived })
    }

    /// The stacks the recording captured, the mappings of the processes they belong to (read
    /// once more now, for libraries loaded meanwhile) and the kernel functions of the kernel
    /// stacks, to the sink. A failure here loses the names, not the events: it is said.
    async fn send_stacks(&mut self, map: &aya::maps::StackTraceMap<MapData>) {
        let mut stacks: Vec<(u32, Vec<u64>)> = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok((id, trace)) => stacks.push((id, trace.frames().iter().map(|f| f.ip).collect())),
                Err(e) => {
                    eprintln!("sched-trace: warning: reading the stack map: {e}");
                    break;
                }
            }
        }
        stacks.sort_by_key(|s| s.0);
        let kernel_addrs: Vec<u64> = stacks.iter().flat_map(|s| s.1.iter().copied()).collect();
        let symbols = match sched_trace_flamegraph::kernel_symbols(&kernel_addrs) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sched-trace: warning: kernel stacks will not be named: {e}");
                Vec::new()
            }
        };
        let now = host::monotonic_ns();
        let mut snapshots = Vec::new();
        if let Some(m) = self.drained.mappings.as_mut() {
            snapshots.extend(m.scan(now));
            snapshots.extend(m.rescan_all(now));
            if m.missed > 0 {
                eprintln!(
                    "sched-trace: warning: {} processes exited before their mappings could be read: \
                     their user frames will not be named",
                    m.missed
                );
            }
        }
        for msg in [
            SinkMsg::Stacks(stacks),
            SinkMsg::Mappings(snapshots),
            SinkMsg::KernelSymbols(crate::trace::format::KernelSymbols { symbols }),
        ] {
            let _ = self.send(msg).await;
        }
    }

    /// Reads the mappings of the processes that want it (new, exec'd, or mapped code since).
    async fn scan_mappings(&mut self) -> Result<(), RecordError> {
        if let Some(m) = self.drained.mappings.as_mut() {
            let read = m.scan(host::monotonic_ns());
            if !read.is_empty() {
                self.send(SinkMsg::Mappings(read)).await?;
            }
        }
        Ok(())
    }

    /// Drains whatever the ring buffer holds right now (after the probes are detached).
    fn drain_now(&mut self) {
        drain(self.ring.get_mut(), &mut self.drained);
    }

    async fn flush(&mut self) -> Result<(), RecordError> {
        if self.drained.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.drained.batch, Vec::with_capacity(BATCH_BYTES * 2));
        self.send(SinkMsg::Records(batch)).await
    }

    async fn send(&mut self, msg: SinkMsg) -> Result<(), RecordError> {
        // The sink only hangs up when writing failed; its error is reported by `record`.
        if self.tx.send(msg).await.is_err() {
            return Err(RecordError::Drain(std::io::Error::other("the trace writer stopped")));
        }
        Ok(())
    }
}

/// What the drain of the ring buffer builds up between flushes.
struct Drained {
    /// Records drained, not yet handed to the sink...
    batch: Vec<u8>,
    /// ...and all drained so far, per kind.
    received: [u64; DropCounters::SLOTS],
    /// Records that were not one whole record of a known kind.
    malformed: u64,
    /// With stacks on: the processes whose stacks were seen (their mappings are wanted)...
    mappings: Option<MappingScanner>,
    /// ...in records of these kinds (a bit per kind).
    stack_kinds: u32,
    /// The Go programs being followed (their goroutines' start pcs are named as they are seen)...
    go: go::GoPrograms,
    /// ...and those whose layout was checked on the live process.
    go_checked: std::collections::HashSet<u32>,
    /// The cgroups of the traced tasks.
    cgroups: cgroups::CgroupWatch,
    /// When recording stopped (`u64::MAX` until then): later records are received (they count
    /// against the kernel's submitted counters) but not written.
    stop_ns: u64,
}

/// The record kinds that carry stacks under `s`, a bit per kind.
fn stack_kinds(s: &StackOptions) -> u32 {
    use sched_trace_abi::kind;
    let bit = |on: bool, k: u8| if on { 1u32 << k } else { 0 };
    bit(s.oncpu_hz.is_some(), kind::CPU_SAMPLE) | bit(s.offcpu, kind::SWITCH) | bit(s.wakeup, kind::WAKING)
}

/// Moves every available record into the batch, checking each is one whole record. Returns the
/// processes that exec'd (their executables may carry USDT probes).
fn drain(ring: &mut RingBuf<MapData>, d: &mut Drained) -> Vec<u32> {
    use sched_trace_abi::{RecordHeader, kind};
    let mut execs = Vec::new();
    while let Some(item) = ring.next() {
        // One whole record of a known kind and size (the sink decodes it).
        let whole = peek_kind_size(&item).is_some_and(|(kind, size)| {
            size == item.len() && sched_trace_abi::record_size(kind) == Some(size)
        });
        if !whole {
            d.malformed += 1;
            continue;
        }
        let k = item[std::mem::offset_of!(RecordHeader, kind)];
        let pid = || peek_ids(&item).map_or(0, |(_, pid)| pid);
        if k == kind::EXEC {
            execs.push(pid());
        }
        if k == kind::USER_TASK && !d.go.is_empty() {
            let word =
                |at: usize| item.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let probe_at = std::mem::offset_of!(sched_trace_abi::UserTaskRecord, probe);
            let args_at = std::mem::offset_of!(sched_trace_abi::UserTaskRecord, args);
            let probe =
                item.get(probe_at..probe_at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
            let args: [u64; 2] = [word(args_at).unwrap_or(0), word(args_at + 8).unwrap_or(0)];
            if let Some(probe) = probe {
                d.go.saw(pid(), probe, &args);
            }
        }
        if k == kind::CGROUP
            && let Ok(crate::trace::event::Decoded::Event(e, _)) = crate::trace::event::decode(&item)
            && let crate::trace::EventKind::Cgroup(c) = e.kind
        {
            d.cgroups.change(e.ts, e.tid, e.pid, &c);
            // A running program moved into a traced cgroup: its executable is new to the
            // recording, as after an exec (USDT probes, Go).
            if c.filter_in && !c.fork {
                execs.push(e.pid);
            }
        }
        if k == kind::MMAP_EXEC
            && let Some(m) = d.mappings.as_mut()
        {
            m.changed(pid());
        }
        // Records that may carry the stack of the process in whose context they fired.
        if let Some(m) = d.mappings.as_mut()
            && d.stack_kinds & (1u32 << (k & 31)) != 0
        {
            m.saw(pid());
        }
        if let Some(r) = d.received.get_mut(k as usize) {
            *r += 1;
        }
        let ts_at = std::mem::offset_of!(RecordHeader, ts_ns);
        let ts = item.get(ts_at..ts_at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        if ts > d.stop_ns {
            continue;
        }
        d.batch.extend_from_slice(&item);
    }
    execs
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn wait_command(command: Option<&mut LaunchedCommand>) -> Result<ExitStatus, RecordError> {
    match command {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Resolves with the index of the first watched process to exit.
async fn first_exit(watched: &[(u32, ProcessExit)]) -> usize {
    let mut waits: Vec<_> = watched.iter().map(|(_, w)| Box::pin(w.exited())).collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in waits.iter_mut().enumerate() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The live status line on stderr.
struct StatusLine {
    enabled: bool,
    drawn: bool,
    last_events: u64,
    last_at: Duration,
}

impl StatusLine {
    fn new(enabled: bool) -> Self {
        StatusLine { enabled, drawn: false, last_events: 0, last_at: Duration::ZERO }
    }

    fn update(&mut self, elapsed: Duration, events: u64, lost: u64, bytes: u64) {
        if !self.enabled {
            return;
        }
        let dt = (elapsed - self.last_at).as_secs_f64().max(1e-3);
        let rate = (events - self.last_events) as f64 / dt;
        self.last_events = events;
        self.last_at = elapsed;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Krecording {:>7.1} s  {} events ({}/s)  lost {}  {}",
            elapsed.as_secs_f64(),
            crate::units::count(events),
            crate::units::count(rate as u64),
            crate::units::count(lost),
            crate::units::bytes(bytes),
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}
