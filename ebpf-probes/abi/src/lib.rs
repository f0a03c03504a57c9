//! The event ABI shared by the kernel programs and user space.
//!
//! Every record the kernel emits starts with a [`RecordHeader`] and is one of the `#[repr(C)]`
//! structs below. Each kind has one fixed size, written into the header, so a reader can skip a
//! kind it does not know. The trace file stores these records verbatim, which is why this crate is
//! the single definition of both the ring-buffer ABI and the on-disk event encoding: changing a
//! layout here means bumping [`ABI_VERSION`].
//!
//! All integers are little-endian (the probes only run on bpfel). Sizes are multiples of 8 so
//! records stay aligned in the ring buffer.
#![no_std]

/// Bumped whenever a record layout or a kind's meaning changes.
pub const ABI_VERSION: u16 = 3;

/// The oldest ABI version readers still decode (see [`legacy_record_size`]).
pub const OLDEST_ABI_VERSION: u16 = 2;

/// A stack id field with no stack captured (stack capture off for that record). Other negative
/// values are the `-errno` `bpf_get_stackid` returned (`-EEXIST`: a hash collision in the stack
/// map, `-ENOMEM`: the map is full, `-EFAULT`: the stack could not be read).
pub const NO_STACK: i32 = -1;

/// Length of a kernel `comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// The kinds of records. Values are stable within an [`ABI_VERSION`].
pub mod kind {
    /// `sched_switch`: `header.tid` is the outgoing thread ([`super::SwitchRecord`]).
    pub const SWITCH: u8 = 1;
    /// `sched_waking`: fired in the waker's context ([`super::WakeRecord`]).
    pub const WAKING: u8 = 2;
    /// `sched_wakeup`: the woken thread is on a run queue ([`super::WakeRecord`]).
    pub const WAKEUP: u8 = 3;
    /// `sched_wakeup_new`: a new thread is on a run queue for the first time ([`super::WakeRecord`]).
    pub const WAKEUP_NEW: u8 = 4;
    /// `sched_migrate_task` ([`super::MigrateRecord`]).
    pub const MIGRATE: u8 = 5;
    /// `sched_process_fork`: a thread or a process was created ([`super::ForkRecord`]).
    pub const FORK: u8 = 6;
    /// `sched_process_exec` ([`super::ExecRecord`]).
    pub const EXEC: u8 = 7;
    /// `sched_process_exit` ([`super::ExitRecord`]).
    pub const EXIT: u8 = 8;
    /// `task_rename`: a thread changed its comm ([`super::RenameRecord`]).
    pub const RENAME: u8 = 9;
    /// Entry of `epoll_wait`, `epoll_pwait` or `epoll_pwait2` ([`super::EpollEnterRecord`]).
    pub const EPOLL_ENTER: u8 = 10;
    /// Exit of one of the epoll wait calls ([`super::EpollExitRecord`]).
    pub const EPOLL_EXIT: u8 = 11;
    /// A user-level runtime event from a USDT probe or uprobe ([`super::UserTaskRecord`]).
    pub const USER_TASK: u8 = 12;
    /// A CPU-clock stack sample ([`super::CpuSampleRecord`]).
    pub const CPU_SAMPLE: u8 = 13;
    /// An `mmap` with `PROT_EXEC` returned in a traced process: a new executable mapping
    /// ([`super::MmapRecord`]). Only with stacks on: it tells the recorder to read the process's
    /// mappings again.
    pub const MMAP_EXEC: u8 = 14;
    /// A traced process's cgroups, when it was created or moved ([`super::CgroupRecord`]).
    pub const CGROUP: u8 = 15;
    /// One more than the largest kind: the size of per-kind tables.
    pub const COUNT: usize = 16;
}

/// Bits of [`RecordHeader::flags`] for [`kind::SWITCH`].
pub mod switch_flags {
    /// The outgoing thread was preempted (it stays runnable).
    pub const PREEMPT: u32 = 1;
    /// The outgoing thread stays runnable but its CFS group (or an ancestor group) is throttled:
    /// its cgroup ran out of CPU quota (`cfs_rq.throttle_count` > 0).
    pub const THROTTLED: u32 = 2;
}

/// Bits of [`RecordHeader::flags`] for [`kind::CGROUP`].
pub mod cgroup_flags {
    /// Emitted at the creation of the process (`sched_process_fork`).
    pub const FORK: u32 = 1;
    /// Emitted at a move (`cgroup_attach_task`).
    pub const MOVE: u32 = 2;
    /// The move took the whole thread group (`cgroup.procs`), not one thread.
    pub const THREADGROUP: u32 = 4;
    /// The cgroup filter took the process in (it entered a traced cgroup).
    pub const FILTER_IN: u32 = 8;
    /// The cgroup filter let the process go (it left the traced cgroups); its last record.
    pub const FILTER_OUT: u32 = 16;
    /// Made by the recorder, not a probe: the process was in a traced cgroup when recording
    /// started (read from the cgroups' `cgroup.procs`).
    pub const SCAN: u32 = 32;
}

/// Bits of [`RecordHeader::flags`] for [`kind::WAKING`].
pub mod waking_flags {
    /// The wake-up ran on an interrupt stack (a timer, a device): the current task was only
    /// interrupted, it is not the waker.
    pub const IN_IRQ: u32 = 1;
    /// Whether the kernel stack could be checked (the `task_struct.stack` offset is known).
    pub const CONTEXT_KNOWN: u32 = 2;
}

/// Bits of [`RecordHeader::flags`] for [`kind::FORK`].
pub mod fork_flags {
    /// The child is a thread of the parent's process (CLONE_THREAD), not a new process.
    pub const THREAD: u32 = 1;
    /// The child's process was added to the kernel-side filter (follow-children mode).
    pub const FOLLOWED: u32 = 2;
}

/// Bits of [`RecordHeader::flags`] for [`kind::EXIT`].
pub mod exit_flags {
    /// The last thread of the process exited.
    pub const GROUP_DEAD: u32 = 1;
}

/// Which epoll wait call an [`EpollEnterRecord`] / [`EpollExitRecord`] is about (`flags`).
pub mod epoll_call {
    pub const EPOLL_WAIT: u32 = 0;
    pub const EPOLL_PWAIT: u32 = 1;
    pub const EPOLL_PWAIT2: u32 = 2;
}

/// Indexes of the per-CPU `DROPS` array beyond the per-kind reservation failures
/// (index = record kind for those).
pub mod drop_slot {
    /// A followed child process could not be added to the filter table (table full).
    pub const FILTER_TABLE_FULL: u32 = 0;
    /// Number of slots in the `DROPS` array.
    pub const COUNT: u32 = super::kind::COUNT as u32;
}

/// Deepest stack the stack map holds (`PERF_MAX_STACK_DEPTH`); a stack this deep may be cut.
pub const MAX_STACK_DEPTH: usize = 127;

/// Names of maps and globals shared by both sides.
pub mod names {
    /// The ring buffer every record goes through.
    pub const EVENTS_MAP: &str = "EVENTS";
    /// Per-CPU counters of failed reservations, indexed by kind (slot 0: filter table full).
    pub const DROPS_MAP: &str = "DROPS";
    /// Per-CPU counters of submitted records, indexed by kind.
    pub const SUBMITTED_MAP: &str = "SUBMITTED";
    /// How to read each USDT probe's arguments, indexed by probe (the uprobe's attach cookie).
    pub const USDT_SPECS_MAP: &str = "USDT_SPECS";
    /// Set of traced process ids (tgid → 1) when the filter is on.
    pub const TRACED_PIDS_MAP: &str = "TRACED_PIDS";
    /// The stack map (`BPF_MAP_TYPE_STACK_TRACE`): stack id → frames.
    pub const STACKS_MAP: &str = "STACKS";
    /// Go processes whose goroutines the probes read (tgid → [`super::GoIdentity`]).
    pub const GO_PROCS_MAP: &str = "GO_PROCS";
    /// The cgroups `record --cgroup` traces ([`super::CgroupKey`] → 1); their descendants too.
    pub const CGROUP_FILTER_MAP: &str = "CGROUP_FILTER";
}

/// Deepest cgroup nesting the kernel-side cgroup filter looks up through.
pub const MAX_CGROUP_DEPTH: usize = 16;

/// A cgroup, kernel-wide: its hierarchy (`cgroup_root.hierarchy_id`, the first field of
/// `/proc/PID/cgroup`; 0 is the v2 hierarchy) and its id there (`kernfs_node.id`, the inode
/// number of its directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub hierarchy: u32,
    pub _pad: u32,
    pub id: u64,
}

/// Which cgroup of a task a [`CgroupRecord`] slot holds.
pub mod cgroup_slot {
    /// The v2 (unified) hierarchy's cgroup: `css_set.dfl_cgrp`.
    pub const V2: usize = 0;
    /// The cgroup of the `cpu` controller (v1 or v2, wherever it is bound).
    pub const CPU: usize = 1;
    /// The cgroup of the `cpuset` controller.
    pub const CPUSET: usize = 2;
    pub const COUNT: usize = 3;
}

/// Common header of every record: 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u8,
    /// Size of the whole record in bytes, header included.
    pub size: u8,
    /// CPU the probe ran on.
    pub cpu: u16,
    /// The current thread (kernel pid) in whose context the probe fired.
    pub tid: u32,
    /// The current thread's process (kernel tgid).
    pub pid: u32,
    /// Kind-specific flag bits.
    pub flags: u32,
}

/// `sched_switch`. The header's thread is the outgoing one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchRecord {
    pub header: RecordHeader,
    pub next_tid: u32,
    pub next_pid: u32,
    /// The outgoing thread's state word (`TASK_*` bits, 0 = still runnable).
    pub prev_state: u32,
    pub prev_prio: i16,
    pub next_prio: i16,
    /// `se.vruntime` of the outgoing thread, 0 if the kernel does not expose it.
    pub prev_vruntime: u64,
    /// `se.vruntime` of the incoming thread.
    pub next_vruntime: u64,
    /// `se.load.weight` of the outgoing thread (kernel-scaled), saturated to u32.
    pub prev_weight: u32,
    pub next_weight: u32,
    /// The outgoing thread's user-mode instruction pointer (0 when not read). A thread
    /// descheduled on its way back from a uprobe's breakpoint has it just past the probe site,
    /// which tells that the probe's record is late by the time it waited.
    pub prev_user_ip: u64,
    /// The CFS run queue (`se.cfs_rq`: the CPU's, or a task group's on that CPU) each thread is
    /// accounted in: vruntimes compare only within one. 0 when not known.
    pub prev_cfs_rq: u64,
    pub next_cfs_rq: u64,
    /// The outgoing thread's user and kernel stacks as it switched out (ids in the stack map;
    /// [`NO_STACK`] when off-CPU stacks are not recorded; ABI 3).
    pub prev_user_stack: i32,
    pub prev_kernel_stack: i32,
}

/// `sched_waking`, `sched_wakeup` and `sched_wakeup_new`. The header's thread is the context the
/// probe ran in: the waker for `sched_waking`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeRecord {
    pub header: RecordHeader,
    pub target_tid: u32,
    pub target_pid: u32,
    pub target_cpu: u32,
    pub target_prio: i32,
    /// `se.vruntime` of the woken task once CFS placed it in the run queue (`sched_wakeup`,
    /// `sched_wakeup_new`; 0 for `sched_waking`, which fires before that).
    pub target_vruntime: u64,
    /// Its `se.cfs_rq` (see [`SwitchRecord::prev_cfs_rq`]).
    pub target_cfs_rq: u64,
    /// The waker's user and kernel stacks (`sched_waking` with wake-up stacks on; else
    /// [`NO_STACK`]; ABI 3).
    pub waker_user_stack: i32,
    pub waker_kernel_stack: i32,
}

/// `sched_migrate_task`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateRecord {
    pub header: RecordHeader,
    pub target_tid: u32,
    pub target_pid: u32,
    pub orig_cpu: u32,
    pub dest_cpu: u32,
}

/// `sched_process_fork`. The header's thread is the parent; flags are [`fork_flags`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub child_tid: u32,
    pub child_pid: u32,
    pub child_comm: [u8; COMM_LEN],
}

/// A process's cgroups (`header.tid` is its leader, or the one thread moved), read from its
/// `css_set` after a fork or a move. Flags are [`cgroup_flags`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    pub header: RecordHeader,
    /// Hierarchy ids of the slots (see [`cgroup_slot`]; `u32::MAX`: not read).
    pub hierarchies: [u32; cgroup_slot::COUNT],
    pub _pad: u32,
    /// Cgroup ids (`kernfs_node.id`) of the slots; 0: not read.
    pub ids: [u64; cgroup_slot::COUNT],
}

/// `sched_process_exec`. The header's thread is the thread after exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: RecordHeader,
    /// The thread id the exec was called from (differs when a non-leader thread execs).
    pub old_tid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched_process_exit`. The header's thread is the exiting one; flags are [`exit_flags`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
}

/// `task_rename`. The header's thread is the renamed one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenameRecord {
    pub header: RecordHeader,
    pub comm: [u8; COMM_LEN],
}

/// Entry of an epoll wait call; flags are one of [`epoll_call`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollEnterRecord {
    pub header: RecordHeader,
    pub epfd: i32,
    pub maxevents: i32,
    /// Timeout in nanoseconds, -1 for "wait forever".
    pub timeout_ns: i64,
}

/// Exit of an epoll wait call; flags are one of [`epoll_call`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollExitRecord {
    pub header: RecordHeader,
    /// Number of ready events, or -errno.
    pub ret: i64,
}

/// A user-level runtime event (a USDT probe point or a runtime uprobe). What the arguments mean
/// depends on `probe`, which indexes the probe table the recorder wrote into the trace file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserTaskRecord {
    pub header: RecordHeader,
    /// Index into the trace's probe table.
    pub probe: u32,
    pub _pad: u32,
    pub args: [u64; USER_TASK_ARGS],
    /// The user-mode instruction pointer when the probe was handled (just past the site).
    pub ip: u64,
}

/// Number of arguments a [`UserTaskRecord`] carries.
pub const USER_TASK_ARGS: usize = 5;

/// A CPU-clock sample of a traced thread with kernel-walked stacks (ids into the stack map;
/// see [`NO_STACK`]). Which user task ran is the correlation's to tell.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSampleRecord {
    pub header: RecordHeader,
    pub user_stack: i32,
    pub kernel_stack: i32,
    /// The sampled user instruction pointer (the leaf of the user stack, when it was in user
    /// mode; 0 otherwise).
    pub user_ip: u64,
}

/// A new executable mapping of `len` bytes at `addr` (see [`kind::MMAP_EXEC`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapRecord {
    pub header: RecordHeader,
    pub addr: u64,
    pub len: u64,
}

/// How one USDT argument is read, from its SystemTap operand (`-8@%rdi`, `4@$5`, `8@-16(%rbp)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArg {
    /// One of [`usdt_arg`].
    pub kind: u32,
    /// Size in bytes (1, 2, 4 or 8); negative for a signed value.
    pub size: i32,
    /// Offset of the register in the kernel's `struct pt_regs` (from its BTF).
    pub reg_off: u32,
    /// For [`usdt_arg::REG_DEREF_CHAIN`]: the displacements of the further loads, in order
    /// ([`usdt_arg::CHAIN_END`] for none).
    pub then: [u16; 2],
    /// The constant, or the displacement added to the register for a memory operand.
    pub value: i64,
}

/// Kinds of [`UsdtArg`].
pub mod usdt_arg {
    pub const NONE: u32 = 0;
    pub const CONST: u32 = 1;
    pub const REG: u32 = 2;
    pub const REG_DEREF: u32 = 3;
    /// A pointer chase the runtime adapters use (not a SystemTap form): load the pointer at
    /// register + `value`, then for each displacement of `then` the pointer at that plus it; the
    /// last load has the argument's size (`g.m.curg.goid` from the current `g`).
    pub const REG_DEREF_CHAIN: u32 = 4;
    /// The end of a [`super::UsdtArg::then`] chain.
    pub const CHAIN_END: u16 = u16::MAX;
}

/// How to read the arguments of one USDT probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    pub nargs: u32,
    pub _pad: u32,
    pub args: [UsdtArg; USER_TASK_ARGS],
}

/// How the probes read which goroutine a thread of one Go process runs (the identity level):
/// the value of the `GO_PROCS` map, keyed by tgid. At a switch-out (and a CPU sample) of such a
/// thread the probes follow its thread pointer to the current `g`, then `g.m.curg` to the user
/// goroutine, and emit a [`UserTaskRecord`] with probe index `probe` and the arguments of
/// [`go_identity_arg`], just before the record of the event itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoIdentity {
    /// Offset of the current `g`'s slot from the thread pointer (`fsbase`).
    pub tls_g: i64,
    pub g_m: u32,
    pub g_goid: u32,
    pub g_atomicstatus: u32,
    pub g_waitreason: u32,
    pub g_startpc: u32,
    pub m_curg: u32,
    /// The probe index its records carry (an entry of the trace's probe table).
    pub probe: u32,
    pub _pad: u32,
}

#[cfg(feature = "aya")]
// SAFETY: plain repr(C) data without padding, valid for any bit pattern.
unsafe impl aya::Pod for GoIdentity {}

/// The arguments of a Go identity record (see [`GoIdentity`]).
pub mod go_identity_arg {
    /// The goroutine's id (`curg.goid`); 0 when the thread ran no user goroutine (an idle M, the
    /// scheduler with no goroutine).
    pub const GOID: usize = 0;
    /// `curg.startpc`: the function the goroutine was started with.
    pub const STARTPC: usize = 1;
    /// `curg.atomicstatus` (`_Grunning`, `_Gsyscall`, …).
    pub const STATUS: usize = 2;
    /// `curg.waitreason`.
    pub const WAITREASON: usize = 3;
    /// 1 when the thread was on another `g` than `curg` (its g0 or signal stack).
    pub const ON_SYSTEM_STACK: usize = 4;
}

/// Most USDT probes one recording attaches.
pub const MAX_USDT_PROBES: u32 = 1024;

#[cfg(feature = "aya")]
// SAFETY: plain repr(C) data without padding, valid for any bit pattern.
unsafe impl aya::Pod for UsdtSpec {}

#[cfg(feature = "aya")]
// SAFETY: plain repr(C) data without padding, valid for any bit pattern.
unsafe impl aya::Pod for CgroupKey {}

/// The size each kind's record has, or `None` for a kind this ABI version does not define.
pub const fn record_size(kind: u8) -> Option<usize> {
    use core::mem::size_of;
    Some(match kind {
        kind::SWITCH => size_of::<SwitchRecord>(),
        kind::WAKING | kind::WAKEUP | kind::WAKEUP_NEW => size_of::<WakeRecord>(),
        kind::MIGRATE => size_of::<MigrateRecord>(),
        kind::FORK => size_of::<ForkRecord>(),
        kind::EXEC => size_of::<ExecRecord>(),
        kind::EXIT => size_of::<ExitRecord>(),
        kind::RENAME => size_of::<RenameRecord>(),
        kind::EPOLL_ENTER => size_of::<EpollEnterRecord>(),
        kind::EPOLL_EXIT => size_of::<EpollExitRecord>(),
        kind::USER_TASK => size_of::<UserTaskRecord>(),
        kind::CPU_SAMPLE => size_of::<CpuSampleRecord>(),
        kind::MMAP_EXEC => size_of::<MmapRecord>(),
        kind::CGROUP => size_of::<CgroupRecord>(),
        _ => return None,
    })
}

/// The size a kind's record had in an older ABI version (files of that version are read), or
/// `None` when it did not change.
pub const fn legacy_record_size(abi: u16, kind: u8) -> Option<usize> {
    match (abi, kind) {
        (2, kind::SWITCH) => Some(88),
        (2, kind::WAKING | kind::WAKEUP | kind::WAKEUP_NEW) => Some(56),
        _ => None,
    }
}

/// The largest record of this ABI version.
pub const MAX_RECORD_SIZE: usize = 96;

// The layouts are the contract: fail the build of either side if they drift.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RecordHeader>() == 24);
    assert!(offset_of!(RecordHeader, kind) == 8);
    assert!(offset_of!(RecordHeader, size) == 9);
    assert!(offset_of!(RecordHeader, cpu) == 10);
    assert!(offset_of!(RecordHeader, tid) == 12);
    assert!(offset_of!(RecordHeader, pid) == 16);
    assert!(offset_of!(RecordHeader, flags) == 20);
    assert!(size_of::<SwitchRecord>() == 96);
    assert!(size_of::<WakeRecord>() == 64);
    assert!(size_of::<MigrateRecord>() == 40);
    assert!(size_of::<ForkRecord>() == 48);
    assert!(size_of::<ExecRecord>() == 48);
    assert!(size_of::<ExitRecord>() == 24);
    assert!(size_of::<RenameRecord>() == 40);
    assert!(size_of::<EpollEnterRecord>() == 40);
    assert!(size_of::<EpollExitRecord>() == 32);
    assert!(size_of::<UserTaskRecord>() == 80);
    assert!(size_of::<CpuSampleRecord>() == 40);
    assert!(size_of::<MmapRecord>() == 40);
    assert!(size_of::<CgroupRecord>() == 64);
    assert!(size_of::<CgroupKey>() == 16);
    assert!(size_of::<UsdtArg>() == 24);
    assert!(size_of::<UsdtSpec>() == 8 + 24 * USER_TASK_ARGS);
    assert!(size_of::<GoIdentity>() == 40);
    let mut k = 0;
    while k < kind::COUNT as u8 {
        if let Some(s) = record_size(k) {
            assert!(s % 8 == 0 && s <= MAX_RECORD_SIZE && s <= u8::MAX as usize);
        }
        k += 1;
    }
};
