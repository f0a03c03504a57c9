//! sched-trace's kernel programs.
//!
//! They observe and emit fixed-size records (`sched-trace-abi`) into one ring buffer. Every
//! program applies the process filter before it reserves ring-buffer space, and counts every
//! failed reservation in the per-CPU `DROPS` array, indexed by record kind.
//!
//! Rust kernel code cannot emit CO-RE relocations, so no kernel struct layout is compiled in:
//! the scheduler probes are BTF tracepoints (`tp_btf`) whose arguments are the tracepoint
//! prototypes (checked against the running kernel's BTF by the loader), and every `task_struct`
//! field is read through an offset the loader found in that BTF and wrote into the globals
//! below. Because those globals are frozen read-only data, the verifier knows their values, so
//! a field is one plain load that it type-checks, not a call to the probe-read helper: on the
//! project's VMs that took `sched_switch` from about 430 ns to about 100 ns per run (see
//! BENCHMARKS.md). The epoll probes are syscall tracepoints whose field offsets the loader read
//! from tracefs.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        generated::{self, bpf_get_attach_cookie, bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, map, perf_event, tracepoint, uprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, BtfTracePointContext, PerfEventContext, ProbeContext, TracePointContext},
    EbpfContext,
};
use sched_trace_abi::{
    cgroup_flags, cgroup_slot, drop_slot, epoll_call, exit_flags, fork_flags, go_identity_arg, kind, switch_flags,
    usdt_arg, waking_flags, CgroupKey, CgroupRecord, CpuSampleRecord, EpollEnterRecord, EpollExitRecord, ExecRecord, ExitRecord, ForkRecord, GoIdentity,
    MigrateRecord, RecordHeader,
    MmapRecord, RenameRecord, SwitchRecord, UserTaskRecord, UsdtArg, UsdtSpec, WakeRecord, COMM_LEN,
    MAX_CGROUP_DEPTH, MAX_USDT_PROBES, NO_STACK, USER_TASK_ARGS,
};

// ---------------------------------------------------------------------------------------------
// Maps. Sizes are set by the loader (`EbpfLoader::set_max_entries`); these are defaults.

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_slot::COUNT, 0);

/// Per-CPU counters of records submitted, indexed by kind: user space checks that it received
/// every one of them.
#[map]
static SUBMITTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_slot::COUNT, 0);

#[map]
static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// Threads inside an `mmap` with `PROT_EXEC` (tid → length asked for), from its entry to its exit.
#[map]
static MMAP_EXEC_PENDING: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Threads inside an epoll wait that was recorded (tid → call), from its entry to its exit: a
/// wait with no timeout cannot block and is not recorded, so neither is its exit.
#[map]
static EPOLL_PENDING: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Go processes whose goroutines the probes read at switch-outs and samples (tgid → layout).
#[map]
static GO_PROCS: HashMap<u32, GoIdentity> = HashMap::with_max_entries(256, 0);

/// The cgroups `record --cgroup` names: a process under one of them is traced.
#[map]
static CGROUP_FILTER: HashMap<CgroupKey, u8> = HashMap::with_max_entries(64, 0);

#[map]
static USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(MAX_USDT_PROBES, 0);

/// Stack id → frames, for the CPU samples and the off-CPU and wake-up stacks. Sized by the
/// loader; a stack whose hash collides with another's is not stored (its record carries
/// `-EEXIST`, counted by user space).
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1024, 0);

// ---------------------------------------------------------------------------------------------
// Globals written by the loader before the programs are loaded.

/// 0: trace every process but the recorder itself; 1: only the processes in `TRACED_PIDS`.
#[unsafe(no_mangle)]
static FILTER_PIDS: u8 = 0;
/// Add child processes of traced processes to `TRACED_PIDS`.
#[unsafe(no_mangle)]
static FOLLOW_CHILDREN: u8 = 0;
/// The recorder's own process, never traced.
#[unsafe(no_mangle)]
static SELF_PID: u32 = 0;
/// Capture the outgoing thread's stacks at every switch-out (off-CPU flame graphs).
#[unsafe(no_mangle)]
static STACKS_OFFCPU: u8 = 0;
/// Capture the waker's stacks at every wake-up of a traced thread (wake-up flame graphs).
#[unsafe(no_mangle)]
static STACKS_WAKEUP: u8 = 0;

/// `task_struct` field offsets from the running kernel's BTF. An offset of `u32::MAX` means the
/// field does not exist on this kernel and the value is recorded as 0.
#[unsafe(no_mangle)]
static TASK_PID: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_TGID: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_PRIO: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_COMM: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_CPU: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_VRUNTIME: u32 = u32::MAX;
#[unsafe(no_mangle)]
static TASK_WEIGHT: u32 = u32::MAX;
/// `task_struct.se.cfs_rq` (group scheduling kernels only).
#[unsafe(no_mangle)]
static TASK_CFS_RQ: u32 = u32::MAX;
/// `task_struct.stack`: the base of the task's kernel stack.
#[unsafe(no_mangle)]
static TASK_STACK: u32 = u32::MAX;
/// `task_struct.thread.fsbase`: the thread pointer of a task's user mode (x86-64).
#[unsafe(no_mangle)]
static TASK_FSBASE: u32 = u32::MAX;
/// `pt_regs.orig_ax`: the syscall number for a syscall, negative for an interrupt.
#[unsafe(no_mangle)]
static PT_REGS_ORIG_AX: u32 = u32::MAX;
/// `pt_regs.ip`.
#[unsafe(no_mangle)]
static PT_REGS_IP: u32 = u32::MAX;

/// The way from a task to its cgroups: `task_struct.cgroups` (its `css_set`), the set's v2
/// cgroup (`dfl_cgrp`) and its `cpu` and `cpuset` controller states (`subsys[...]`), a state's
/// cgroup (`cgroup_subsys_state.cgroup`), a cgroup's directory (`kn`) and that directory's id,
/// its parent (`self.parent`, a controller state), and its hierarchy (`root`, `hierarchy_id`).
#[unsafe(no_mangle)]
static TASK_CGROUPS: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CSS_SET_CPU: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CSS_SET_CPUSET: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CSS_CGROUP: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CGROUP_KN: u32 = u32::MAX;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CGROUP_PARENT: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CGROUP_ROOT: u32 = u32::MAX;
#[unsafe(no_mangle)]
static CGROUP_ROOT_HIERARCHY_ID: u32 = u32::MAX;
/// `cfs_rq.throttle_count`: above 0 while the group or one of its ancestors is throttled.
#[unsafe(no_mangle)]
static CFS_RQ_THROTTLE_COUNT: u32 = u32::MAX;
/// Trace the processes under the cgroups of `CGROUP_FILTER` (with `FILTER_PIDS`: the filter
/// table is kept by the fork and cgroup-move probes).
#[unsafe(no_mangle)]
static FILTER_CGROUPS: u8 = 0;

/// Offsets of the fields of the epoll syscall tracepoints, from their tracefs `format` files.
#[unsafe(no_mangle)]
static EPOLL_EPFD: u32 = 16;
#[unsafe(no_mangle)]
static EPOLL_MAXEVENTS: u32 = 32;
#[unsafe(no_mangle)]
static EPOLL_TIMEOUT: u32 = 40;
#[unsafe(no_mangle)]
static EPOLL_RET: u32 = 16;

/// Follow executable `mmap`s (when stacks are recorded: their names need the mappings), and the
/// offsets of the fields of the mmap syscall tracepoints read.
#[unsafe(no_mangle)]
static TRACK_MMAP: u8 = 0;
#[unsafe(no_mangle)]
static MMAP_LEN: u32 = 24;
#[unsafe(no_mangle)]
static MMAP_PROT: u32 = 32;
#[unsafe(no_mangle)]
static MMAP_RET: u32 = 16;

#[inline(always)]
fn global<T: Copy>(g: &'static T) -> T {
    // Globals live in .rodata and are patched by the loader: stop the compiler folding them.
    unsafe { core::ptr::read_volatile(g) }
}

// ---------------------------------------------------------------------------------------------
// Filter.

#[inline(always)]
fn traced(pid: u32) -> bool {
    if global(&FILTER_PIDS) == 0 {
        return pid != global(&SELF_PID);
    }
    unsafe { TRACED_PIDS.get(&pid).is_some() }
}

// ---------------------------------------------------------------------------------------------
// Reading `task_struct` through load-time offsets.

/// A kernel object the verifier knows the BTF type of (a `tp_btf` argument, the current task,
/// its saved registers). Its fields are plain loads, not helper calls: the offsets are globals in
/// the frozen `.rodata`, so the verifier sees them as constants and checks each load against the
/// type, and a load that faults reads 0.
#[derive(Clone, Copy)]
struct Task(u64);

/// Field `offset` of the kernel object at `base` (see [`Task`]); 0 for a null object or an
/// offset the kernel's BTF did not have.
#[inline(always)]
fn load<T: Default>(base: u64, offset: u32) -> T {
    if offset == u32::MAX || base == 0 {
        return T::default();
    }
    // Volatile: the compiler must not merge loads of neighbouring fields into one wider load,
    // which the verifier would refuse as crossing a field boundary.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

impl Task {
    #[inline(always)]
    fn field<T: Default>(self, offset: u32) -> T {
        load(self.0, offset)
    }
    /// The task's cgroups, by [`cgroup_slot`].
    #[inline(always)]
    fn cgroups(self) -> [Cgroup; cgroup_slot::COUNT] {
        let set: u64 = self.field(global(&TASK_CGROUPS));
        [
            Cgroup(load(set, global(&CSS_SET_DFL_CGRP))),
            Cgroup::of_state(load(set, global(&CSS_SET_CPU))),
            Cgroup::of_state(load(set, global(&CSS_SET_CPUSET))),
        ]
    }
    #[inline(always)]
    fn tid(self) -> u32 {
        self.field::<u32>(global(&TASK_PID))
    }
    #[inline(always)]
    fn pid(self) -> u32 {
        self.field::<u32>(global(&TASK_TGID))
    }
    #[inline(always)]
    fn prio(self) -> i32 {
        self.field::<i32>(global(&TASK_PRIO))
    }
    #[inline(always)]
    fn cpu(self) -> u32 {
        self.field::<u32>(global(&TASK_CPU))
    }
    #[inline(always)]
    fn vruntime(self) -> u64 {
        self.field::<u64>(global(&TASK_VRUNTIME))
    }
    #[inline(always)]
    fn weight(self) -> u32 {
        let w = self.field::<u64>(global(&TASK_WEIGHT));
        if w > u32::MAX as u64 { u32::MAX } else { w as u32 }
    }
    /// Through the probe-read helper: one call instead of a load per byte (fork, exec only).
    #[inline(always)]
    fn cfs_rq(self) -> u64 {
        self.field::<u64>(global(&TASK_CFS_RQ))
    }
    #[inline(always)]
    fn comm(self) -> [u8; COMM_LEN] {
        let offset = global(&TASK_COMM);
        if offset == u32::MAX || self.0 == 0 {
            return [0; COMM_LEN];
        }
        unsafe { bpf_probe_read_kernel((self.0 + offset as u64) as *const [u8; COMM_LEN]) }.unwrap_or_default()
    }
}

/// A `struct cgroup`.
#[derive(Clone, Copy)]
struct Cgroup(u64);

impl Cgroup {
    /// The cgroup of a controller state (`struct cgroup_subsys_state`).
    #[inline(always)]
    fn of_state(css: u64) -> Cgroup {
        Cgroup(load(css, global(&CSS_CGROUP)))
    }
    #[inline(always)]
    fn key(self) -> CgroupKey {
        let root: u64 = load(self.0, global(&CGROUP_ROOT));
        let kn: u64 = load(self.0, global(&CGROUP_KN));
        CgroupKey {
            hierarchy: load::<i32>(root, global(&CGROUP_ROOT_HIERARCHY_ID)) as u32,
            _pad: 0,
            id: load(kn, global(&KERNFS_NODE_ID)),
        }
    }
    #[inline(always)]
    fn parent(self) -> Cgroup {
        Cgroup::of_state(load(self.0, global(&CGROUP_PARENT)))
    }
    /// Whether this cgroup or one of its ancestors is in the cgroup filter.
    #[inline(always)]
    fn filtered(self) -> bool {
        let mut c = self;
        for _ in 0..MAX_CGROUP_DEPTH {
            if c.0 == 0 {
                return false;
            }
            if unsafe { CGROUP_FILTER.get(&c.key()) }.is_some() {
                return true;
            }
            c = c.parent();
        }
        false
    }
}

/// Whether a task is in a cgroup `record --cgroup` traces (in any of its hierarchies).
#[inline(always)]
fn cgroup_traced(task: Task) -> bool {
    let [v2, cpu, cpuset] = task.cgroups();
    v2.filtered() || cpu.filtered() || cpuset.filtered()
}

/// Whether a runnable task's CFS group (or an ancestor group) is throttled.
#[inline(always)]
fn throttled(cfs_rq: u64) -> bool {
    load::<i32>(cfs_rq, global(&CFS_RQ_THROTTLE_COUNT)) > 0
}

// ---------------------------------------------------------------------------------------------
// Emission.

#[inline(always)]
fn header(kind: u8, size: usize, tid: u32, pid: u32, flags: u32) -> RecordHeader {
    header_at(unsafe { bpf_ktime_get_ns() }, kind, size, tid, pid, flags)
}

/// [`header`] with a timestamp taken earlier.
#[inline(always)]
fn header_at(ts_ns: u64, kind: u8, size: usize, tid: u32, pid: u32, flags: u32) -> RecordHeader {
    RecordHeader {
        ts_ns,
        kind,
        size: size as u8,
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        tid,
        pid,
        flags,
    }
}

#[inline(always)]
fn current() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

const BPF_F_USER_STACK: u64 = 1 << 8;

/// The current task's user and kernel stack ids (or `-errno`), if `on`.
#[inline(always)]
fn stacks<C: StackIdContext>(ctx: &C, on: bool) -> (i32, i32) {
    if !on {
        return (NO_STACK, NO_STACK);
    }
    let id = |flags| match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    (id(BPF_F_USER_STACK), id(0))
}

#[inline(always)]
fn count_drop(slot: u32) {
    if let Some(c) = DROPS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}

/// Wake the reader only once this many bytes wait in the ring buffer (it also drains on a
/// timer): a wake-up per record would cost a context switch per record.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Check how much waits in the ring buffer (to decide on waking the reader) once per this many
/// records of a kind on a CPU: every helper call costs, and the reader drains on a timer anyway.
const WAKEUP_CHECK_EVERY: u64 = 32;

/// Copies one record into the ring buffer; a failed reservation is counted under `kind`.
///
/// One `bpf_ringbuf_output` rather than reserve + submit: a helper call is the dearest thing a
/// probe does on the machines this runs on (return thunks, retpolines), and the copy of a record
/// of at most 80 bytes is cheap next to it.
#[inline(always)]
fn emit<T: 'static>(kind: u8, record: T) {
    emit_waking(kind, record, false)
}

/// [`emit`], waking the reader at once when `now` (for rare records it must act on quickly).
#[inline(always)]
fn emit_waking<T: 'static>(kind: u8, record: T, now: bool) {
    let submitted = SUBMITTED.get_ptr_mut(kind as u32);
    let count = match submitted {
        Some(c) => unsafe { *c },
        None => 0,
    };
    let flags = if now
        || (count % WAKEUP_CHECK_EVERY == WAKEUP_CHECK_EVERY - 1
            && EVENTS.query(BPF_RB_AVAIL_DATA) >= global(&WAKEUP_BYTES))
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.output::<T>(&record, flags) {
        Ok(()) => {
            if let Some(c) = submitted {
                unsafe { *c = count + 1 };
            }
        }
        Err(_) => count_drop(kind as u32),
    }
}

// ---------------------------------------------------------------------------------------------
// Go identity: which goroutine the current thread runs.

/// Reads `T` from the current task's user memory; 0 when the page is not there.
#[inline(always)]
fn user<T: Default>(addr: u64) -> T {
    if addr == 0 {
        return T::default();
    }
    unsafe { bpf_probe_read_user(addr as *const T) }.unwrap_or_default()
}

/// When the current task `task` (thread `tid` of process `pid`) belongs to a Go process of
/// `GO_PROCS`, emits which goroutine it runs (see [`GoIdentity`]). Five user-memory reads, no
/// loop; nothing for other processes beyond one map lookup.
#[inline(always)]
fn go_identity(task: Task, tid: u32, pid: u32) {
    let Some(layout) = (unsafe { GO_PROCS.get(&pid) }) else { return };
    let fsbase = task.field::<u64>(global(&TASK_FSBASE));
    if fsbase == 0 {
        return;
    }
    // An unreadable g is emitted too (as no goroutine): keeping the previous one on the thread
    // through whatever comes next would be worse than not knowing.
    let g: u64 = user(fsbase.wrapping_add(layout.tls_g as u64));
    let m: u64 = if g == 0 { 0 } else { user(g + layout.g_m as u64) };
    let curg: u64 = if m == 0 { 0 } else { user(m + layout.m_curg as u64) };
    let mut args = [0u64; USER_TASK_ARGS];
    if curg != 0 {
        args[go_identity_arg::GOID] = user::<u64>(curg + layout.g_goid as u64);
        args[go_identity_arg::STARTPC] = user::<u64>(curg + layout.g_startpc as u64);
        args[go_identity_arg::STATUS] = user::<u32>(curg + layout.g_atomicstatus as u64) as u64;
        args[go_identity_arg::WAITREASON] = user::<u8>(curg + layout.g_waitreason as u64) as u64;
    }
    args[go_identity_arg::ON_SYSTEM_STACK] = (g != curg) as u64;
    emit(
        kind::USER_TASK,
        UserTaskRecord {
            header: header(kind::USER_TASK, core::mem::size_of::<UserTaskRecord>(), tid, pid, 0),
            probe: layout.probe,
            _pad: 0,
            args,
            ip: 0,
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Scheduler BTF tracepoints. Prototypes (checked by the loader):
//   sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)
//   sched_waking / sched_wakeup / sched_wakeup_new(task_struct *p)
//   sched_migrate_task(task_struct *p, int dest_cpu)
//   sched_process_fork(task_struct *parent, task_struct *child)
//   sched_process_exec(task_struct *p, pid_t old_pid, linux_binprm *bprm)
//   sched_process_exit(task_struct *p, bool group_dead)
//   task_rename(task_struct *task, const char *comm)

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev = Task(ctx.arg(1));
    let next = Task(ctx.arg(2));
    let prev_state: u64 = ctx.arg(3);
    // `prev` is the current task: its ids are loads, not a helper call.
    let (prev_tid, prev_pid) = (prev.tid(), prev.pid());
    let next_pid = next.pid();
    let prev_traced = traced(prev_pid);
    if !prev_traced && !traced(next_pid) {
        return 0;
    }
    let mut flags = if preempt & 0xff != 0 { switch_flags::PREEMPT } else { 0 };
    let prev_cfs_rq = prev.cfs_rq();
    if prev_traced && (prev_state == 0 || flags != 0) && throttled(prev_cfs_rq) {
        flags |= switch_flags::THROTTLED;
    }
    // Where the outgoing thread was in user mode (see SwitchRecord::prev_user_ip).
    let prev_user_ip = if prev_traced {
        let regs = unsafe { bpf_task_pt_regs(prev.0 as *mut _) } as u64;
        Task(regs).field::<u64>(global(&PT_REGS_IP))
    } else {
        0
    };
    // `prev` is the current task: its stacks are the ones the helper walks, and its goroutine
    // the one its thread pointer leads to.
    let (prev_user_stack, prev_kernel_stack) = stacks(&ctx, prev_traced && global(&STACKS_OFFCPU) != 0);
    if prev_traced {
        go_identity(prev, prev_tid, prev_pid);
    }
    emit(
        kind::SWITCH,
        SwitchRecord {
            header: header(
                kind::SWITCH,
                core::mem::size_of::<SwitchRecord>(),
                prev_tid,
                prev_pid,
                flags,
            ),
            next_tid: next.tid(),
            next_pid,
            prev_state: prev_state as u32,
            prev_prio: prev.prio() as i16,
            next_prio: next.prio() as i16,
            prev_vruntime: prev.vruntime(),
            next_vruntime: next.vruntime(),
            prev_weight: prev.weight(),
            next_weight: next.weight(),
            prev_user_ip,
            prev_cfs_rq,
            next_cfs_rq: next.cfs_rq(),
            prev_user_stack,
            prev_kernel_stack,
        },
    );
    0
}

/// Largest kernel stack (THREAD_SIZE) of x86-64 kernels, KASAN builds included.
const MAX_THREAD_SIZE: u64 = 32 << 10;

/// Whether the probe fired in interrupt context (the current task was only interrupted) or in
/// the current task's own doing.
///
/// An interrupt that arrives in kernel mode runs on the CPU's interrupt stack; a raw
/// tracepoint's argument array lives on the stack of the kernel code that fired it, so its
/// address tells which stack that was. (The program's own frame does not: tracing programs may
/// run on a private per-CPU stack.) An interrupt that arrives in user mode runs on the task's
/// stack, above the user registers saved at entry, whose `orig_ax` is then negative (it holds
/// the syscall number when the task entered with a syscall).
#[inline(always)]
fn context_flags(ctx: &BtfTracePointContext, current: Task) -> u32 {
    let (stack_off, orig_ax_off) = (global(&TASK_STACK), global(&PT_REGS_ORIG_AX));
    if stack_off == u32::MAX || orig_ax_off == u32::MAX {
        return 0;
    }
    let base = current.field::<u64>(stack_off);
    if base == 0 {
        return 0;
    }
    let pointer = ctx.as_ptr() as u64;
    // The verifier does no arithmetic on context pointers; copying the pointer through the
    // probe-read helper turns it into a plain number.
    let args = unsafe { bpf_probe_read_kernel(&pointer as *const u64) }.unwrap_or(0);
    if args.wrapping_sub(base) >= MAX_THREAD_SIZE {
        return waking_flags::CONTEXT_KNOWN | waking_flags::IN_IRQ;
    }
    let regs = unsafe { bpf_task_pt_regs(current.0 as *mut _) } as u64;
    let orig_ax = Task(regs).field::<i64>(orig_ax_off);
    if orig_ax < 0 {
        waking_flags::CONTEXT_KNOWN | waking_flags::IN_IRQ
    } else {
        waking_flags::CONTEXT_KNOWN
    }
}

#[inline(always)]
fn wake(ctx: &BtfTracePointContext, kind: u8) -> i32 {
    let p = Task(ctx.arg(0));
    let target_pid = p.pid();
    if !traced(target_pid) {
        return 0;
    }
    // The waker is the current task: its ids are loads, not a helper call.
    let current = Task(unsafe { bpf_get_current_task_btf() } as u64);
    let (tid, pid) = (current.tid(), current.pid());
    let flags = if kind == kind::WAKING { context_flags(ctx, current) } else { 0 };
    // The waker's stacks, unless the wake-up ran in interrupt context (then they are the
    // interrupted task's, not the waker's).
    let (waker_user_stack, waker_kernel_stack) = stacks(
        ctx,
        kind == kind::WAKING && global(&STACKS_WAKEUP) != 0 && flags & waking_flags::IN_IRQ == 0,
    );
    emit(
        kind,
        WakeRecord {
            header: header(kind, core::mem::size_of::<WakeRecord>(), tid, pid, flags),
            target_tid: p.tid(),
            target_pid,
            target_cpu: p.cpu(),
            target_prio: p.prio(),
            target_vruntime: if kind == kind::WAKING { 0 } else { p.vruntime() },
            target_cfs_rq: if kind == kind::WAKING { 0 } else { p.cfs_rq() },
            waker_user_stack,
            waker_kernel_stack,
        },
    );
    0
}

#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> i32 {
    wake(&ctx, kind::WAKING)
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    wake(&ctx, kind::WAKEUP)
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    wake(&ctx, kind::WAKEUP_NEW)
}

#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(ctx: BtfTracePointContext) -> i32 {
    let p = Task(ctx.arg(0));
    let dest_cpu: u64 = ctx.arg(1);
    let target_pid = p.pid();
    if !traced(target_pid) {
        return 0;
    }
    let (tid, pid) = current();
    emit(
        kind::MIGRATE,
        MigrateRecord {
            header: header(kind::MIGRATE, core::mem::size_of::<MigrateRecord>(), tid, pid, 0),
            target_tid: p.tid(),
            target_pid,
            orig_cpu: p.cpu(),
            dest_cpu: dest_cpu as u32,
        },
    );
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let parent = Task(ctx.arg(0));
    let child = Task(ctx.arg(1));
    let parent_pid = parent.pid();
    let parent_traced = traced(parent_pid);
    let child_tid = child.tid();
    let child_pid = child.pid();
    let mut flags = 0;
    let mut follow = false;
    if child_pid == parent_pid {
        if !parent_traced {
            return 0;
        }
        flags |= fork_flags::THREAD;
    } else if global(&FILTER_CGROUPS) != 0 {
        // By the child's own cgroups: it may have been created straight into another one
        // (clone3's CLONE_INTO_CGROUP), which no move event reports.
        follow = cgroup_traced(child);
        if !follow && !parent_traced {
            return 0;
        }
    } else {
        if !parent_traced {
            return 0;
        }
        follow = global(&FILTER_PIDS) != 0 && global(&FOLLOW_CHILDREN) != 0;
    }
    if follow {
        // Before the child first runs (its wakeup_new comes after this tracepoint), so none of
        // its events is filtered out.
        if TRACED_PIDS.insert(&child_pid, &1, 0).is_ok() {
            flags |= fork_flags::FOLLOWED;
        } else {
            count_drop(drop_slot::FILTER_TABLE_FULL);
        }
    }
    emit(
        kind::FORK,
        ForkRecord {
            header: header(
                kind::FORK,
                core::mem::size_of::<ForkRecord>(),
                parent.tid(),
                parent_pid,
                flags,
            ),
            child_tid,
            child_pid,
            child_comm: child.comm(),
        },
    );
    if flags & fork_flags::THREAD == 0 && (flags & fork_flags::FOLLOWED != 0 || global(&FILTER_PIDS) == 0) {
        let filter = if global(&FILTER_CGROUPS) != 0 && follow { cgroup_flags::FILTER_IN } else { 0 };
        emit_cgroups(child, cgroup_flags::FORK | filter);
    }
    0
}

/// A process moved to another cgroup (a write to `cgroup.procs`, or to v1's `tasks` for one
/// thread). The move is done when this fires: the task's `css_set` is the new one.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(2));
    let threadgroup: u64 = ctx.arg(3);
    let pid = task.pid();
    let was_traced = traced(pid);
    let mut flags = cgroup_flags::MOVE;
    if threadgroup & 0xff != 0 {
        flags |= cgroup_flags::THREADGROUP;
    }
    if global(&FILTER_CGROUPS) != 0 {
        let now_traced = cgroup_traced(task);
        if now_traced && !was_traced {
            if TRACED_PIDS.insert(&pid, &1, 0).is_err() {
                count_drop(drop_slot::FILTER_TABLE_FULL);
                return 0;
            }
            flags |= cgroup_flags::FILTER_IN;
        } else if !now_traced && was_traced {
            let _ = TRACED_PIDS.remove(&pid);
            flags |= cgroup_flags::FILTER_OUT;
        } else if !now_traced {
            return 0;
        }
    } else if !was_traced {
        return 0;
    }
    emit_cgroups(task, flags);
    0
}

#[inline(always)]
fn emit_cgroups(task: Task, flags: u32) {
    if global(&TASK_CGROUPS) == u32::MAX {
        return;
    }
    let [v2, cpu, cpuset] = task.cgroups();
    let (v2, cpu, cpuset) = (v2.key(), cpu.key(), cpuset.key());
    emit_waking(
        kind::CGROUP,
        CgroupRecord {
            header: header(kind::CGROUP, core::mem::size_of::<CgroupRecord>(), task.tid(), task.pid(), flags),
            hierarchies: [v2.hierarchy, cpu.hierarchy, cpuset.hierarchy],
            _pad: 0,
            ids: [v2.id, cpu.id, cpuset.id],
        },
        // The recorder reads the new cgroup's controls while it still exists.
        true,
    );
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let p = Task(ctx.arg(0));
    let old_tid: u64 = ctx.arg(1);
    let (tid, pid) = current();
    if !traced(pid) {
        return 0;
    }
    emit(
        kind::EXEC,
        ExecRecord {
            header: header(kind::EXEC, core::mem::size_of::<ExecRecord>(), tid, pid, 0),
            old_tid: old_tid as u32,
            _pad: 0,
            comm: p.comm(),
        },
    );
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    let (tid, pid) = current();
    if !traced(pid) {
        return 0;
    }
    let flags = if group_dead & 0xff != 0 { exit_flags::GROUP_DEAD } else { 0 };
    emit(
        kind::EXIT,
        ExitRecord {
            header: header(kind::EXIT, core::mem::size_of::<ExitRecord>(), tid, pid, flags),
        },
    );
    0
}

#[btf_tracepoint(function = "task_rename")]
pub fn task_rename(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let new_comm: u64 = ctx.arg(1);
    let pid = task.pid();
    if !traced(pid) {
        return 0;
    }
    let mut comm = [0u8; COMM_LEN];
    // A failed read leaves an empty name, which user space reports as unknown.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(new_comm as *const u8, &mut comm) };
    emit(
        kind::RENAME,
        RenameRecord {
            header: header(kind::RENAME, core::mem::size_of::<RenameRecord>(), task.tid(), pid, 0),
            comm,
        },
    );
    0
}

// ---------------------------------------------------------------------------------------------
// epoll wait calls: syscall tracepoints (the thread-level view of a netpoller).

/// Records an epoll wait's entry, unless its timeout is zero: such a poll returns at once (Go's
/// scheduler makes hundreds of thousands a second on a busy server, two thirds of the events of
/// a recording of one), and the thread never waits in it.
#[inline(always)]
fn epoll_enter(ctx: &TracePointContext, call: u32, timeout_ns: i64) -> u32 {
    if timeout_ns == 0 {
        return 0;
    }
    let (tid, pid) = current();
    // The exit is recorded only for an entry that was: if the thread cannot be noted, its exit
    // will be missing, and is counted as lost.
    if EPOLL_PENDING.insert(&tid, &call, 0).is_err() {
        count_drop(kind::EPOLL_EXIT as u32);
    }
    let epfd: u64 = unsafe { ctx.read_at(global(&EPOLL_EPFD) as usize) }.unwrap_or(u64::MAX);
    let maxevents: u64 = unsafe { ctx.read_at(global(&EPOLL_MAXEVENTS) as usize) }.unwrap_or(0);
    emit(
        kind::EPOLL_ENTER,
        EpollEnterRecord {
            header: header(
                kind::EPOLL_ENTER,
                core::mem::size_of::<EpollEnterRecord>(),
                tid,
                pid,
                call,
            ),
            epfd: epfd as i32,
            maxevents: maxevents as i32,
            timeout_ns,
        },
    );
    0
}

#[inline(always)]
fn current_traced() -> bool {
    traced((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// `timeout` of epoll_wait / epoll_pwait: milliseconds, negative = forever.
#[inline(always)]
fn timeout_ms(ctx: &TracePointContext) -> i64 {
    let ms: u64 = unsafe { ctx.read_at(global(&EPOLL_TIMEOUT) as usize) }.unwrap_or(u64::MAX);
    let ms = ms as i32;
    if ms < 0 { -1 } else { ms as i64 * 1_000_000 }
}

#[tracepoint]
pub fn sys_enter_epoll_wait(ctx: TracePointContext) -> u32 {
    if !current_traced() {
        return 0;
    }
    epoll_enter(&ctx, epoll_call::EPOLL_WAIT, timeout_ms(&ctx))
}

#[tracepoint]
pub fn sys_enter_epoll_pwait(ctx: TracePointContext) -> u32 {
    if !current_traced() {
        return 0;
    }
    epoll_enter(&ctx, epoll_call::EPOLL_PWAIT, timeout_ms(&ctx))
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[tracepoint]
pub fn sys_enter_epoll_pwait2(ctx: TracePointContext) -> u32 {
    if !current_traced() {
        return 0;
    }
    // `timeout` is a `struct __kernel_timespec *` in user memory; NULL waits forever.
    let ptr: u64 = unsafe { ctx.read_at(global(&EPOLL_TIMEOUT) as usize) }.unwrap_or(0);
    let timeout_ns = if ptr == 0 {
        -1
    } else {
        match unsafe { bpf_probe_read_user(ptr as *const KernelTimespec) } {
            // Bounded so the multiplication cannot overflow (no 128-bit math in BPF).
            Ok(ts) if ts.tv_sec >= 0 && ts.tv_sec < 1 << 32 => {
                ts.tv_sec * 1_000_000_000 + (ts.tv_nsec & 0x3fff_ffff)
            }
            Ok(ts) if ts.tv_sec >= 0 => i64::MAX,
            _ => -1,
        }
    };
    epoll_enter(&ctx, epoll_call::EPOLL_PWAIT2, timeout_ns)
}

#[inline(always)]
fn epoll_exit(ctx: &TracePointContext, call: u32) -> u32 {
    let (tid, pid) = current();
    // Fails (nothing to remove) when the entry was not recorded.
    if EPOLL_PENDING.remove(&tid).is_err() {
        return 0;
    }
    if !traced(pid) {
        return 0;
    }
    let ret: i64 = unsafe { ctx.read_at(global(&EPOLL_RET) as usize) }.unwrap_or(0);
    emit(
        kind::EPOLL_EXIT,
        EpollExitRecord {
            header: header(
                kind::EPOLL_EXIT,
                core::mem::size_of::<EpollExitRecord>(),
                tid,
                pid,
                call,
            ),
            ret,
        },
    );
    0
}

#[tracepoint]
pub fn sys_exit_epoll_wait(ctx: TracePointContext) -> u32 {
    epoll_exit(&ctx, epoll_call::EPOLL_WAIT)
}

#[tracepoint]
pub fn sys_exit_epoll_pwait(ctx: TracePointContext) -> u32 {
    epoll_exit(&ctx, epoll_call::EPOLL_PWAIT)
}

#[tracepoint]
pub fn sys_exit_epoll_pwait2(ctx: TracePointContext) -> u32 {
    epoll_exit(&ctx, epoll_call::EPOLL_PWAIT2)
}

// ---------------------------------------------------------------------------------------------
// Executable mmaps: the entry notes that the thread maps code, the exit (when the mapping
// exists) tells the recorder, at once, so that it reads the process's mappings while the
// process is alive (ld.so maps a program's libraries right after exec, before any tick).

const PROT_EXEC: u64 = 4;

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    if global(&TRACK_MMAP) == 0 || !current_traced() {
        return 0;
    }
    let prot: u64 = unsafe { ctx.read_at(global(&MMAP_PROT) as usize) }.unwrap_or(0);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let len: u64 = unsafe { ctx.read_at(global(&MMAP_LEN) as usize) }.unwrap_or(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    if MMAP_EXEC_PENDING.insert(&tid, &len, 0).is_err() {
        count_drop(kind::MMAP_EXEC as u32);
    }
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    if global(&TRACK_MMAP) == 0 {
        return 0;
    }
    let (tid, pid) = current();
    let Some(len) = (unsafe { MMAP_EXEC_PENDING.get(&tid) }).copied() else { return 0 };
    let _ = MMAP_EXEC_PENDING.remove(&tid);
    let ret: u64 = unsafe { ctx.read_at(global(&MMAP_RET) as usize) }.unwrap_or(u64::MAX);
    // -4095..-1 is an error number: no mapping.
    if ret >= (-4095i64) as u64 {
        return 0;
    }
    emit_waking(
        kind::MMAP_EXEC,
        MmapRecord {
            header: header(kind::MMAP_EXEC, core::mem::size_of::<MmapRecord>(), tid, pid, 0),
            addr: ret,
            len,
        },
        true,
    );
    0
}

// ---------------------------------------------------------------------------------------------
// CPU samples: a software cpu-clock perf event on every CPU (attached at the sampling frequency
// the recorder is given) fires this in the context of whatever runs there.

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let current = Task(unsafe { bpf_get_current_task_btf() } as u64);
    let (tid, pid) = (current.tid(), current.pid());
    if tid == 0 || !traced(pid) {
        return 0;
    }
    let (user_stack, kernel_stack) = stacks(&ctx, true);
    go_identity(current, tid, pid);
    let regs = unsafe { bpf_task_pt_regs(current.0 as *mut _) } as u64;
    emit(
        kind::CPU_SAMPLE,
        CpuSampleRecord {
            header: header(kind::CPU_SAMPLE, core::mem::size_of::<CpuSampleRecord>(), tid, pid, 0),
            user_stack,
            kernel_stack,
            user_ip: Task(regs).field::<u64>(global(&PT_REGS_IP)),
        },
    );
    0
}

// ---------------------------------------------------------------------------------------------
// USDT probes (user-level runtime events). One program serves every probe: the loader attaches
// it at each probe's location with the probe's index as the attach cookie, and writes in
// USDT_SPECS how that probe's arguments are read (parsed from its .note.stapsdt operands).

#[uprobe]
pub fn usdt(ctx: ProbeContext) -> u32 {
    let (tid, pid) = current();
    if !traced(pid) {
        return 0;
    }
    // The time first: the argument reads below take longer for some probes than for others.
    let ts = unsafe { bpf_ktime_get_ns() };
    let probe = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = USDT_SPECS.get(probe) else { return 0 };
    // The registers in one read rather than one per operand and one for the ip: a helper call
    // is most of what a probe costs here, after the trap itself (the full level of a Go
    // program fires several per goroutine switch).
    let regs = Registers::of(&ctx);
    let ip = regs.get(global(&PT_REGS_IP));
    // Each element written once (a zeroed array first is a call to a BPF `memset`).
    let arg = |i: usize| if (i as u32) < spec.nargs { usdt_arg(&regs, &spec.args[i]) } else { 0 };
    let args: [u64; USER_TASK_ARGS] = [arg(0), arg(1), arg(2), arg(3), arg(4)];
    emit(
        kind::USER_TASK,
        UserTaskRecord {
            header: header_at(ts, kind::USER_TASK, core::mem::size_of::<UserTaskRecord>(), tid, pid, 0),
            probe,
            _pad: 0,
            args,
            ip,
        },
    );
    0
}

/// `sizeof(struct pt_regs)` (from BTF): the registers are copied whole when it fits.
#[unsafe(no_mangle)]
static PT_REGS_SIZE: u32 = 0;

/// Room for an x86-64 `struct pt_regs` (21 words).
const REGS_WORDS: usize = 24;

/// Where [`Registers`] copies them: a map value rather than the stack, which has no room to
/// spare and would be zeroed first (a call to a BPF `memset`). Uprobe programs run with
/// preemption off, so one per CPU is enough.
#[map]
static REGS_COPY: PerCpuArray<[u64; REGS_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// The probed task's registers (a uprobe's context is its user-mode `struct pt_regs`).
struct Registers {
    ctx: *const u8,
    /// The copy, when it was taken (its first `copied` bytes).
    copy: *const [u64; REGS_WORDS],
    copied: u32,
}

impl Registers {
    #[inline(always)]
    fn of(ctx: &ProbeContext) -> Registers {
        let ctx = ctx.as_ptr() as *const u8;
        let size = global(&PT_REGS_SIZE);
        let Some(copy) = REGS_COPY.get_ptr_mut(0) else {
            return Registers { ctx, copy: core::ptr::null(), copied: 0 };
        };
        let mut copied = 0;
        if size > 0 && size as usize <= REGS_WORDS * 8 {
            let rc = unsafe {
                generated::bpf_probe_read_kernel(copy as *mut core::ffi::c_void, size, ctx as *const core::ffi::c_void)
            };
            if rc == 0 {
                copied = size;
            }
        }
        Registers { ctx, copy, copied }
    }

    /// The register at byte offset `off` of `pt_regs` (`u32::MAX`: unknown, 0).
    #[inline(always)]
    fn get(&self, off: u32) -> u64 {
        if off == u32::MAX {
            return 0;
        }
        let word = (off / 8) as usize;
        if off % 8 == 0 && off + 8 <= self.copied && word < REGS_WORDS {
            return unsafe { (*self.copy)[word] };
        }
        unsafe { bpf_probe_read_kernel(self.ctx.wrapping_add(off as usize) as *const u64) }.unwrap_or(0)
    }
}

/// Follows a chain of at most two further pointers from `addr` (see `usdt_arg::REG_DEREF_CHAIN`):
/// the address of the chain's last load, 0 when a pointer on the way is null or unreadable.
#[inline(always)]
fn chase(addr: u64, then: [u16; 2]) -> u64 {
    let mut addr = addr;
    for d in then {
        if d == usdt_arg::CHAIN_END {
            break;
        }
        let p: u64 = user(addr);
        if p == 0 {
            return 0;
        }
        addr = p.wrapping_add(d as u64);
    }
    addr
}

#[inline(always)]
fn usdt_arg(regs: &Registers, a: &UsdtArg) -> u64 {
    let raw: u64 = match a.kind {
        usdt_arg::CONST => return a.value as u64,
        usdt_arg::REG | usdt_arg::REG_DEREF | usdt_arg::REG_DEREF_CHAIN => {
            // reg_off comes from the kernel's BTF.
            let reg = regs.get(a.reg_off);
            if a.kind == usdt_arg::REG {
                reg
            } else {
                let addr = reg.wrapping_add(a.value as u64);
                let addr = if a.kind == usdt_arg::REG_DEREF_CHAIN { chase(addr, a.then) } else { addr };
                unsafe {
                    match a.size.unsigned_abs() {
                        1 => bpf_probe_read_user(addr as *const u8).map(|v| v as u64),
                        2 => bpf_probe_read_user(addr as *const u16).map(|v| v as u64),
                        4 => bpf_probe_read_user(addr as *const u32).map(|v| v as u64),
                        _ => bpf_probe_read_user(addr as *const u64),
                    }
                }
                .unwrap_or(0)
            }
        }
        _ => return 0,
    };
    // Keep the operand's size, sign-extended when it is signed.
    let bits = match a.size.unsigned_abs() {
        1 => 8,
        2 => 16,
        4 => 32,
        _ => return raw,
    };
    let shift = 64 - bits;
    if a.size < 0 {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
