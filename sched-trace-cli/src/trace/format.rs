//! The on-disk layout of a trace file, version 2.
//!
//! ```text
//! file    = header chunk*
//! header  = magic "SCHDTRCE" | version u16 | flags u16 (0) | info_len u32 | info_crc u32 | info
//!           info: the recording's facts (`TraceInfo`) as JSON, at most MAX_INFO_LEN bytes
//! chunk   = magic "CHNK" | kind u8 | flags u8 | reserved u16 (0) | stored_len u32 | raw_len u32
//!           | crc u32 | payload (stored_len bytes; lz4 block if flags & COMPRESSED; once
//!           decompressed, in the columnar layout of `columnar` if flags & COLUMNAR)
//!           crc = CRC-32 of the 16 header bytes before it and the stored payload
//! ```
//!
//! All integers are little-endian. The recorder writes every chunk with one `write`, so a
//! recording cut off by a crash or a full disk ends in at most one partial chunk, and everything
//! before it is readable. An `END` chunk marks a recording that was closed cleanly.
//!
//! Chunk payloads:
//! - `EVENTS`: ABI records (`sched-trace-abi`) in timestamp order across the file (the recorder
//!   holds back and sorts; readers still tolerate small disorder): back to back, or in columns
//!   by kind (`COLUMNAR`, what the recorder writes).
//!
//! Version 2 added the columnar layout (and goes with ABI version 2).
//! - `TASKS`: fixed 40-byte task-table entries (`TaskEntry`).
//! - `DROPS`: a cumulative snapshot of the per-CPU lost-record counters; the last one counts.
//! - `PROBES`: user-level probes attached during the recording (after an exec), as JSON
//!   (`ProbesChunk`); they precede every record of theirs.
//! - `STACKS`: the stack table: `id u32 | depth u16 | 0 u16 | depth × address u64`, repeated
//!   (user and kernel stacks share the table; a stack id of a record names one).
//! - `MAPPINGS`: one process's executable mappings at a moment (`MappingsChunk`) as JSON: what
//!   the user stacks' addresses are symbolized through, after the process is gone.
//! - `KSYMS`: the kernel functions the kernel stacks' addresses fall in (`KernelSymbols`), as
//!   JSON, resolved when the recording ended (so the trace symbolizes on another machine).
//! - `GO`: the Go programs among the traced processes and how their goroutines were followed,
//!   and the names of the functions their goroutines started with (`GoChunk`), as JSON; written
//!   when a Go program is found and again as goroutines are seen (later entries add to earlier).
//! - `END`: the recording's closing facts (`EndInfo`) as JSON.
//!
//! Readers skip chunk kinds they do not know, so later versions can add tables (stacks,
//! mappings, user-task probes) without breaking older readers.

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"SCHDTRCE";
pub const FORMAT_VERSION: u16 = 2;
pub const FILE_HEADER_LEN: usize = 20;
pub const MAX_INFO_LEN: u32 = 1 << 20;

pub const CHUNK_MAGIC: [u8; 4] = *b"CHNK";
pub const CHUNK_HEADER_LEN: usize = 20;
/// Largest payload a chunk may claim, stored or decompressed. A reader refuses anything bigger
/// before allocating.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;

/// Chunk flag: the payload is an lz4 block.
pub const CHUNK_COMPRESSED: u8 = 1;
/// Chunk flag: the (decompressed) payload is in the columnar layout (`EVENTS` chunks only).
pub const CHUNK_COLUMNAR: u8 = 2;

/// Kinds of chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkKind {
    Events = 1,
    Tasks = 2,
    Drops = 3,
    Probes = 4,
    Stacks = 5,
    Mappings = 6,
    KernelSymbols = 7,
    Go = 8,
    Cgroups = 9,
    End = 15,
}

impl ChunkKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Events,
            2 => Self::Tasks,
            3 => Self::Drops,
            4 => Self::Probes,
            5 => Self::Stacks,
            6 => Self::Mappings,
            7 => Self::KernelSymbols,
            8 => Self::Go,
            9 => Self::Cgroups,
            15 => Self::End,
            _ => return None,
        })
    }
}

/// Facts about a recording, written once at the start of the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// Version of the event records (`sched_trace_abi::ABI_VERSION`).
    pub abi_version: u16,
    /// The program and version that wrote the file.
    pub recorder: String,
    pub hostname: String,
    pub kernel_release: String,
    /// Number of possible CPUs (the size of per-CPU tables).
    pub possible_cpus: u32,
    pub online_cpus: Vec<u32>,
    /// The clock of every timestamp in the file.
    pub clock: String,
    /// Wall-clock time = timestamp + this offset (ns), measured when recording started.
    pub realtime_offset_ns: i64,
    /// Half-width of the window in which the offset was measured (ns).
    pub realtime_offset_error_ns: u64,
    /// Timestamp at which recording started.
    pub start_ns: u64,
    /// The command line of the recorder.
    pub command_line: Vec<String>,
    /// The recorder's own process: left out of a system-wide recording's statistics.
    pub recorder_pid: u32,
    /// What was traced.
    pub target: TraceTarget,
    /// Size of the kernel ring buffer in bytes.
    pub ring_buffer_bytes: u64,
    /// Probes that were attached, as `kind:name`.
    pub probes: Vec<String>,
    /// `task_struct` fields the kernel exposed (those not listed are recorded as 0).
    pub task_fields: Vec<String>,
    /// User-level probes (USDT) attached; a user-task record names one by its index.
    pub user_probes: Vec<UserProbe>,
    /// User-level probes found but not attached, and why.
    pub skipped_user_probes: Vec<String>,
    /// Threads known to be asleep (off CPU, not runnable) when the recording started: the
    /// launched command, held before its exec. Their state is known from the first event on.
    #[serde(default)]
    pub asleep_at_start: Vec<u32>,
    /// Which stacks the recording captured (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StackCapture>,
}

/// The stacks a recording captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCapture {
    /// CPU samples per second per CPU (none: no samples).
    pub oncpu_hz: Option<u64>,
    /// The stacks of every switch-out of a traced thread.
    pub offcpu: bool,
    /// The waker's stacks at every wake-up of a traced thread.
    pub wakeup: bool,
    /// Entries of the kernel's stack map: how many distinct stacks it could hold.
    pub map_entries: u32,
}

/// A user-level probe in a trace's probe table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProbe {
    /// Index carried by its records (`UserTaskRecord::probe`).
    pub index: u32,
    pub binary: String,
    pub provider: String,
    pub name: String,
    pub file_offset: u64,
    /// The probe's operands, as its note wrote them.
    pub args: String,
    /// Names of the values of the probe's reason argument (Go's wait reasons for `go:gopark`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reasons: std::collections::BTreeMap<u64, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum TraceTarget {
    /// Every process but the recorder.
    #[default]
    SystemWide,
    /// These processes (and their new threads).
    Pids { pids: Vec<u32> },
    /// A command started by the recorder, and all its descendants.
    Command { argv: Vec<String>, pid: u32 },
    /// The processes of these cgroups (directories) and of the cgroups below them, as they
    /// come and go (`record --cgroup`).
    Cgroups { paths: Vec<String> },
}

/// One executable mapping of a process (`/proc/PID/maps`, file-backed and executable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub path: String,
    /// The file's GNU build id (hex), when it has one: a copy elsewhere is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// A process's executable mappings from `ts` on (until a later snapshot of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingsChunk {
    pub pid: u32,
    pub ts: u64,
    pub maps: Vec<Mapping>,
}

/// Kernel addresses of the recording's kernel stacks and the functions they fall in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSymbols {
    /// (address, function name), by address.
    pub symbols: Vec<(u64, String)>,
}

/// Go programs found among the traced processes, and the start functions of their goroutines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoChunk {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GoProcess>,
    /// (pid, start pc, function name): what `g.startpc` values seen in the records name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_functions: Vec<(u32, u64, String)>,
}

/// One Go program that was traced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoProcess {
    pub pid: u32,
    pub binary: String,
    /// `go1.23.9`.
    pub go_version: String,
    pub main_path: String,
    pub main_module: String,
    /// Build settings (`GOARCH`, `CGO_ENABLED`, `-ldflags`, `vcs.revision`, …).
    pub build_settings: Vec<(String, String)>,
    /// How goroutines were followed: `identity` (read at every switch-out), or `off` with
    /// `problem` saying why.
    pub level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Where the runtime layout came from: `dwarf` (the binary's) or `table` (generated, for the
    /// Go version; the binary was stripped).
    pub layout_source: String,
    /// The probe index of its goroutine records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<u32>,
    /// `runtime.gomaxprocs`, read from the process while it ran (`None`: not readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gomaxprocs: Option<u32>,
    /// How many CPUs its affinity allowed when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_allowed: Option<u32>,
    /// `runtime._G*` statuses by value, and `runtime.waitReason*` names by value.
    pub statuses: std::collections::BTreeMap<u64, String>,
    pub wait_reasons: std::collections::BTreeMap<u64, String>,
}

/// What a recording learned about cgroups since its previous chunk of this kind: the cgroup
/// hierarchies (in the first), cgroups and their CPU controls, which cgroup each traced task was
/// in from when, samples of the cgroups' CPU throttling, and the CPUs each process could use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupsChunk {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hierarchies: Vec<CgroupHierarchy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<CgroupMember>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<CpuStatSample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessCpus>,
}

impl CgroupsChunk {
    pub fn is_empty(&self) -> bool {
        self.hierarchies.is_empty()
            && self.cgroups.is_empty()
            && self.members.is_empty()
            && self.samples.is_empty()
            && self.processes.is_empty()
    }
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupHierarchy {
    /// `cgroup_root.hierarchy_id`, as `/proc/PID/cgroup` numbers it (0: the v2 hierarchy).
    pub id: u32,
    /// 1 or 2.
    pub version: u8,
    /// The controllers bound to it (`cpu`, `cpuset`, `name=systemd`, …).
    pub controllers: Vec<String>,
    pub mount: String,
}

/// A cgroup and its CPU controls, as read at `ts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupInfo {
    pub hierarchy: u32,
    /// `kernfs_node.id`: the inode number of its directory.
    pub id: u64,
    /// Its path from the hierarchy's root (`/` is the root); empty when it was gone before it
    /// could be named.
    pub path: String,
    pub ts: u64,
    #[serde(default)]
    pub cpu: CpuControls,
}

/// A cgroup's CPU controls (what its hierarchy's controllers have; `None`: not there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuControls {
    /// CPU time allowed per period, µs (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_us: Option<u64>,
    /// v2 `cpu.weight` (1–10000, 100 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u64>,
    /// v1 `cpu.shares` (1024 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// The CPUs its cpuset lets it use (`cpuset.cpus.effective`, a list like `0-3,6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
}

impl CpuControls {
    /// The quota in CPUs (quota / period).
    pub fn quota_cpus(&self) -> Option<f64> {
        match (self.quota_us, self.period_us) {
            (Some(q), Some(p)) if p > 0 => Some(q as f64 / p as f64),
            _ => None,
        }
    }
}

/// From `ts` on, thread `tid` (0: every thread) of process `pid` was in cgroup `id` of
/// hierarchy `hierarchy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMember {
    pub ts: u64,
    pub pid: u32,
    pub tid: u32,
    pub hierarchy: u32,
    pub id: u64,
}

/// A cgroup's CPU bandwidth counters (`cpu.stat`) at `ts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStatSample {
    pub ts: u64,
    pub hierarchy: u32,
    pub id: u64,
    /// Enforcement periods that had runnable tasks...
    pub nr_periods: u64,
    /// ...of which ended with the group throttled...
    pub nr_throttled: u64,
    /// ...and the time its run queues spent throttled (summed over CPUs), ns.
    pub throttled_ns: u64,
    /// CPU time used (v2 `usage_usec`), ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_ns: Option<u64>,
}

/// The CPUs process `pid` could run on at `ts`: the union of its threads' affinities (which
/// the kernel keeps within its cpuset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCpus {
    pub pid: u32,
    pub ts: u64,
    pub cpus_allowed: Vec<u32>,
}

/// User-level probes attached during a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbesChunk {
    pub added: Vec<UserProbe>,
    pub skipped: Vec<String>,
}

/// Facts written when a recording is closed cleanly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndInfo {
    /// Timestamp at which recording stopped (before the probes were detached).
    pub end_ns: u64,
    /// Records written to the file.
    pub events: u64,
    /// Why the recording stopped, in words.
    pub stop_reason: String,
    /// Set when writing the trace failed (a full disk): what is missing from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_failure: Option<WriteFailure>,
}

/// A recording whose writing failed: nothing after `last_written_ns` is in the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteFailure {
    /// The write error, in words.
    pub error: String,
    /// Timestamp of the last event the file holds.
    pub last_written_ns: u64,
    /// Events the recorder received from the kernel but could not write (the kernel kept
    /// producing more until the recording stopped; those are not counted anywhere).
    pub unwritten_events: u64,
}

/// Where a task-table entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum TaskSource {
    /// Read from /proc when recording started.
    Scan = 1,
    /// Created during the recording (fork/clone).
    Fork = 2,
    /// Named by exec.
    Exec = 3,
    /// Renamed (prctl, pthread_setname_np, /proc/.../comm).
    Rename = 4,
    /// Seen in an event and looked up in /proc afterwards.
    Lookup = 5,
    /// Seen in an event but gone before it could be looked up.
    Unknown = 6,
}

impl TaskSource {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Scan,
            2 => Self::Fork,
            3 => Self::Exec,
            4 => Self::Rename,
            5 => Self::Lookup,
            6 => Self::Unknown,
            _ => return None,
        })
    }
}

/// One row of the task table: from `ts` on, thread `tid` of process `pid` was called `comm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEntry {
    pub ts: u64,
    pub tid: u32,
    pub pid: u32,
    pub comm: crate::trace::Comm,
    pub source: TaskSource,
}

pub const TASK_ENTRY_LEN: usize = 40;
