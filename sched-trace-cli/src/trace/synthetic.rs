//! Builders of kernel records, for synthetic traces: tests of the decoder, the reader and every
//! analysis, and benchmarks, without a kernel.

use sched_trace_abi::*;

use super::Comm;

/// The bytes of an ABI record, as the kernel writes them.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the ABI records are repr(C) plain data without padding (their sizes are asserted
    // to be the sums of their fields in sched-trace-abi), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

/// A record header.
pub fn header(kind: u8, size: usize, ts: u64, cpu: u16, tid: u32, pid: u32, flags: u32) -> RecordHeader {
    RecordHeader { ts_ns: ts, kind, size: size as u8, cpu, tid, pid, flags }
}

/// A cgroup record about process `pid` (thread `tid`): flags are `cgroup_flags`, and
/// `cgroups` the (hierarchy, id) of each `cgroup_slot`.
pub fn cgroup(
    ts: u64,
    tid: u32,
    pid: u32,
    flags: u32,
    cgroups: [(u32, u64); sched_trace_abi::cgroup_slot::COUNT],
) -> Vec<u8> {
    let r = sched_trace_abi::CgroupRecord {
        header: header(
            kind::CGROUP,
            std::mem::size_of::<sched_trace_abi::CgroupRecord>(),
            ts,
            0,
            tid,
            pid,
            flags,
        ),
        hierarchies: cgroups.map(|c| c.0),
        _pad: 0,
        ids: cgroups.map(|c| c.1),
    };
    bytes_of(&r)
}

/// `sched_switch` from `prev` to `next` (each `(tid, pid)`) on `cpu`.
pub fn switch(
    ts: u64,
    cpu: u16,
    prev: (u32, u32),
    next: (u32, u32),
    prev_state: u32,
    preempt: bool,
) -> Vec<u8> {
    let r = SwitchRecord {
        header: header(
            kind::SWITCH,
            std::mem::size_of::<SwitchRecord>(),
            ts,
            cpu,
            prev.0,
            prev.1,
            if preempt { switch_flags::PREEMPT } else { 0 },
        ),
        next_tid: next.0,
        next_pid: next.1,
        prev_state,
        prev_prio: 120,
        next_prio: 120,
        prev_vruntime: 1000,
        next_vruntime: 2000,
        prev_weight: 1024,
        next_weight: 1024,
        prev_user_ip: 0,
        prev_cfs_rq: 0,
        next_cfs_rq: 0,
        prev_user_stack: NO_STACK,
        prev_kernel_stack: NO_STACK,
    };
    bytes_of(&r)
}

/// `sched_waking`/`sched_wakeup`/`sched_wakeup_new` (`k`) of `target` in `waker`'s context.
pub fn wake(k: u8, ts: u64, cpu: u16, waker: (u32, u32), target: (u32, u32)) -> Vec<u8> {
    let r = WakeRecord {
        header: header(k, std::mem::size_of::<WakeRecord>(), ts, cpu, waker.0, waker.1, 0),
        target_tid: target.0,
        target_pid: target.1,
        target_cpu: cpu as u32,
        target_prio: 120,
        target_vruntime: 0,
        target_cfs_rq: 0,
        waker_user_stack: NO_STACK,
        waker_kernel_stack: NO_STACK,
    };
    bytes_of(&r)
}

/// `sched_migrate_task` of `target` from CPU `from` to `to`.
pub fn migrate(ts: u64, cpu: u16, target: (u32, u32), from: u32, to: u32) -> Vec<u8> {
    let r = MigrateRecord {
        header: header(kind::MIGRATE, std::mem::size_of::<MigrateRecord>(), ts, cpu, 0, 0, 0),
        target_tid: target.0,
        target_pid: target.1,
        orig_cpu: from,
        dest_cpu: to,
    };
    bytes_of(&r)
}

/// `sched_process_fork`: `parent` created `child` (a thread when both share a pid).
pub fn fork(ts: u64, parent: (u32, u32), child: (u32, u32), comm: &str) -> Vec<u8> {
    let flags = if parent.1 == child.1 { fork_flags::THREAD } else { 0 };
    let r = ForkRecord {
        header: header(kind::FORK, std::mem::size_of::<ForkRecord>(), ts, 0, parent.0, parent.1, flags),
        child_tid: child.0,
        child_pid: child.1,
        child_comm: Comm::new(comm).0,
    };
    bytes_of(&r)
}

/// `task_rename` of `task` to `comm`.
pub fn rename(ts: u64, task: (u32, u32), comm: &str) -> Vec<u8> {
    let r = RenameRecord {
        header: header(kind::RENAME, std::mem::size_of::<RenameRecord>(), ts, 0, task.0, task.1, 0),
        comm: Comm::new(comm).0,
    };
    bytes_of(&r)
}

/// `sched_process_exit` of `task`.
pub fn exit(ts: u64, task: (u32, u32), group_dead: bool) -> Vec<u8> {
    let flags = if group_dead { exit_flags::GROUP_DEAD } else { 0 };
    bytes_of(&ExitRecord {
        header: header(kind::EXIT, std::mem::size_of::<ExitRecord>(), ts, 0, task.0, task.1, flags),
    })
}

/// Entry of `epoll_wait` by `task` with a timeout (-1: forever).
pub fn epoll_enter(ts: u64, task: (u32, u32), timeout_ns: i64) -> Vec<u8> {
    bytes_of(&EpollEnterRecord {
        header: header(
            kind::EPOLL_ENTER,
            std::mem::size_of::<EpollEnterRecord>(),
            ts,
            0,
            task.0,
            task.1,
            epoll_call::EPOLL_WAIT,
        ),
        epfd: 3,
        maxevents: 8,
        timeout_ns,
    })
}

/// Exit of `epoll_wait` by `task` with `ret` ready events.
pub fn epoll_exit(ts: u64, task: (u32, u32), ret: i64) -> Vec<u8> {
    bytes_of(&EpollExitRecord {
        header: header(
            kind::EPOLL_EXIT,
            std::mem::size_of::<EpollExitRecord>(),
            ts,
            0,
            task.0,
            task.1,
            epoll_call::EPOLL_WAIT,
        ),
        ret,
    })
}

/// A user-level probe hit: probe `probe` (an index into the trace's probe table) fired by
/// `task` on `cpu` with up to [`USER_TASK_ARGS`] arguments.
pub fn user_task(ts: u64, cpu: u16, task: (u32, u32), probe: u32, args: &[u64]) -> Vec<u8> {
    let mut all = [0u64; USER_TASK_ARGS];
    for (a, v) in all.iter_mut().zip(args) {
        *a = *v;
    }
    bytes_of(&UserTaskRecord {
        header: header(kind::USER_TASK, std::mem::size_of::<UserTaskRecord>(), ts, cpu, task.0, task.1, 0),
        probe,
        _pad: 0,
        args: all,
        ip: 0,
    })
}

/// An entry of a trace's probe table: the reference runtime's USDT probe `name` (`refrt`
/// provider), carried by records with probe index `index`.
pub fn refrt_probe(index: u32, name: &str) -> super::UserProbe {
    super::UserProbe {
        index,
        binary: "/bin/refrt".into(),
        provider: "refrt".into(),
        name: name.into(),
        file_offset: 0x1000 + index as u64,
        args: String::new(),
        reasons: Default::default(),
    }
}

/// A CPU-clock sample of `task` on `cpu` with stacks `user` and `kernel` (ids in the trace's
/// stack table).
pub fn cpu_sample(ts: u64, cpu: u16, task: (u32, u32), user: i32, kernel: i32) -> Vec<u8> {
    bytes_of(&CpuSampleRecord {
        header: header(kind::CPU_SAMPLE, std::mem::size_of::<CpuSampleRecord>(), ts, cpu, task.0, task.1, 0),
        user_stack: user,
        kernel_stack: kernel,
        user_ip: 0,
    })
}
