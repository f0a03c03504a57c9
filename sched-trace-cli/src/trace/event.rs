//! Decoding of the kernel's records (`sched-trace-abi`) into [`Event`]s.
//!
//! The same bytes travel through the ring buffer and into the trace file, so the recorder and
//! every analysis decode with this one function. Field positions come from the ABI structs'
//! `offset_of!`, never from numbers written here.

use std::{fmt, mem::offset_of};

use sched_trace_abi::{
    self as abi, COMM_LEN, RecordHeader, USER_TASK_ARGS, epoll_call, exit_flags, fork_flags, kind,
    switch_flags, waking_flags,
};
use serde::{Serialize, Serializer};

/// A thread name (`comm`) as the kernel stores it: up to 16 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; COMM_LEN]);

impl Comm {
    pub fn new(name: &str) -> Self {
        let mut c = [0u8; COMM_LEN];
        let n = name.len().min(COMM_LEN - 1);
        c[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(c)
    }
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..end]
    }
    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which epoll wait call an epoll event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpollCall {
    Wait,
    Pwait,
    Pwait2,
}

/// A thread being woken: `sched_waking` / `sched_wakeup` / `sched_wakeup_new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    pub tid: u32,
    pub pid: u32,
    pub cpu: u32,
    pub prio: i32,
    /// `se.vruntime` once placed in the run queue (wake-ups only; 0: not known).
    pub vruntime: u64,
    /// The CFS run queue it was placed in (wake-ups only; 0: not known).
    pub cfs_rq: u64,
    /// For `sched_waking`: whether the wake-up ran on an interrupt stack, so that the current
    /// task was merely interrupted (`None`: not known).
    pub in_irq: Option<bool>,
    /// For `sched_waking` with wake-up stacks on: the waker's user and kernel stacks (stack
    /// ids, or `NO_STACK`, or `-errno`).
    pub waker_stacks: (i32, i32),
}

/// One decoded record. `tid`/`pid` are the thread in whose context the probe fired (the outgoing
/// thread for a switch, the waker for `Waking`, the renamed thread for `Rename`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    pub ts: u64,
    pub cpu: u16,
    pub tid: u32,
    pub pid: u32,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EventKind {
    Switch(Switch),
    Waking(Wake),
    Wakeup(Wake),
    WakeupNew(Wake),
    Migrate {
        tid: u32,
        pid: u32,
        orig_cpu: u32,
        dest_cpu: u32,
    },
    Fork {
        child_tid: u32,
        child_pid: u32,
        thread: bool,
        followed: bool,
        comm: Comm,
    },
    Exec {
        old_tid: u32,
        comm: Comm,
    },
    Exit {
        group_dead: bool,
    },
    Rename {
        comm: Comm,
    },
    EpollEnter {
        call: EpollCall,
        epfd: i32,
        maxevents: i32,
        timeout_ns: i64,
    },
    EpollExit {
        call: EpollCall,
        ret: i64,
    },
    /// `ip`: the user instruction pointer when the probe was handled (just past its site).
    UserTask {
        probe: u32,
        args: [u64; USER_TASK_ARGS],
        ip: u64,
    },
    CpuSample {
        user_stack: i32,
        kernel_stack: i32,
        user_ip: u64,
    },
    /// The thread mapped `len` bytes of code at `addr` (with stacks on).
    MmapExec {
        addr: u64,
        len: u64,
    },
    /// Process `pid` (thread `tid` alone unless `threadgroup`) was created or moved and is in
    /// these cgroups now (see [`sched_trace_abi::cgroup_slot`]; names in the trace's cgroup
    /// table). The header's thread is that task, not the one the probe ran in.
    Cgroup(CgroupChange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupChange {
    /// (hierarchy id, cgroup id) per slot; id 0: not read.
    pub cgroups: [(u32, u64); sched_trace_abi::cgroup_slot::COUNT],
    pub fork: bool,
    pub threadgroup: bool,
    /// The cgroup filter took the process in, or let it go.
    pub filter_in: bool,
    pub filter_out: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub preempt: bool,
    /// The outgoing thread stays runnable but its cgroup is throttled (out of CPU quota).
    pub throttled: bool,
    pub prev_state: u32,
    pub prev_prio: i16,
    pub next_tid: u32,
    pub next_pid: u32,
    pub next_prio: i16,
    pub prev_vruntime: u64,
    pub next_vruntime: u64,
    pub prev_weight: u32,
    pub next_weight: u32,
    /// User instruction pointer of an outgoing thread that stays runnable (0: not read).
    pub prev_user_ip: u64,
    /// The CFS run queues the two threads are accounted in (0: not known).
    pub prev_cfs_rq: u64,
    pub next_cfs_rq: u64,
    /// The outgoing thread's user and kernel stacks (stack ids, `NO_STACK` or `-errno`).
    pub prev_stacks: (i32, i32),
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is cut off: {available} bytes left, header needs {needed}")]
    Short { available: usize, needed: usize },
    #[error("record of kind {kind} claims {claimed} bytes; this kind is {expected} bytes")]
    BadSize { kind: u8, claimed: usize, expected: usize },
    #[error("record of unknown kind {kind} claims an impossible size of {claimed} bytes")]
    BadUnknownSize { kind: u8, claimed: usize },
}

/// Outcome of decoding the record at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoded {
    /// A record of a known kind, and its size.
    Event(Event, usize),
    /// A well-framed record of a kind this version does not know, skipped.
    Unknown { kind: u8, size: usize },
}

const HEADER_LEN: usize = std::mem::size_of::<RecordHeader>();

/// Reads the kind and size of the record at the start of `buf` (no validation beyond length).
pub fn peek_kind_size(buf: &[u8]) -> Option<(u8, usize)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some((buf[offset_of!(RecordHeader, kind)], buf[offset_of!(RecordHeader, size)] as usize))
}

/// Reads the timestamp of the record at the start of `buf`.
pub fn peek_ts(buf: &[u8]) -> Option<u64> {
    let b: [u8; 8] = buf.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Reads the thread and process ids of the record at the start of `buf` (no validation beyond
/// length).
pub fn peek_ids(buf: &[u8]) -> Option<(u32, u32)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Some((word(offset_of!(RecordHeader, tid)), word(offset_of!(RecordHeader, pid))))
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    let Some((k, size)) = peek_kind_size(buf) else {
        return Err(DecodeError::Short { available: buf.len(), needed: HEADER_LEN });
    };
    let Some(expected) = abi::record_size(k) else {
        if size < HEADER_LEN || size % 8 != 0 || size > buf.len() {
            return Err(DecodeError::BadUnknownSize { kind: k, claimed: size });
        }
        return Ok(Decoded::Unknown { kind: k, size });
    };
    // A record of the ABI before this one (an older trace) lacks the fields added since.
    let legacy = abi::legacy_record_size(abi::OLDEST_ABI_VERSION, k) == Some(size);
    if size != expected && !legacy {
        return Err(DecodeError::BadSize { kind: k, claimed: size, expected });
    }
    if buf.len() < size {
        return Err(DecodeError::Short { available: buf.len(), needed: size });
    }
    // The record in place when the buffer holds the largest record's size from here (the next
    // records are not read), else a padded copy.
    let mut padded = [0u8; abi::MAX_RECORD_SIZE];
    let bytes = match buf.first_chunk::<{ abi::MAX_RECORD_SIZE }>() {
        Some(whole) => whole,
        None => {
            padded[..size].copy_from_slice(&buf[..size]);
            &padded
        }
    };
    let mut b = Fields { bytes, pos: 0 };
    let ts = b.get_u64_le();
    b.advance(2); // kind, size
    let cpu = b.get_u16_le();
    let tid = b.get_u32_le();
    let pid = b.get_u32_le();
    let flags = b.get_u32_le();
    debug_assert_eq!(b.pos, HEADER_LEN);
    let kind = match k {
        kind::SWITCH => EventKind::Switch(Switch {
            preempt: flags & switch_flags::PREEMPT != 0,
            throttled: flags & switch_flags::THROTTLED != 0,
            next_tid: b.get_u32_le(),
            next_pid: b.get_u32_le(),
            prev_state: b.get_u32_le(),
            prev_prio: b.get_i16_le(),
            next_prio: b.get_i16_le(),
            prev_vruntime: b.get_u64_le(),
            next_vruntime: b.get_u64_le(),
            prev_weight: b.get_u32_le(),
            next_weight: b.get_u32_le(),
            prev_user_ip: b.get_u64_le(),
            prev_cfs_rq: b.get_u64_le(),
            next_cfs_rq: b.get_u64_le(),
            prev_stacks: stacks(&mut b, legacy),
        }),
        kind::WAKING | kind::WAKEUP | kind::WAKEUP_NEW => {
            let w = Wake {
                tid: b.get_u32_le(),
                pid: b.get_u32_le(),
                cpu: b.get_u32_le(),
                prio: b.get_i32_le(),
                vruntime: b.get_u64_le(),
                cfs_rq: b.get_u64_le(),
                in_irq: (flags & waking_flags::CONTEXT_KNOWN != 0)
                    .then_some(flags & waking_flags::IN_IRQ != 0),
                waker_stacks: stacks(&mut b, legacy),
            };
            match k {
                kind::WAKING => EventKind::Waking(w),
                kind::WAKEUP => EventKind::Wakeup(w),
                _ => EventKind::WakeupNew(w),
            }
        }
        kind::MIGRATE => EventKind::Migrate {
            tid: b.get_u32_le(),
            pid: b.get_u32_le(),
            orig_cpu: b.get_u32_le(),
            dest_cpu: b.get_u32_le(),
        },
        kind::FORK => EventKind::Fork {
            child_tid: b.get_u32_le(),
            child_pid: b.get_u32_le(),
            thread: flags & fork_flags::THREAD != 0,
            followed: flags & fork_flags::FOLLOWED != 0,
            comm: get_comm(&mut b),
        },
        kind::EXEC => {
            let old_tid = b.get_u32_le();
            b.advance(4);
            EventKind::Exec { old_tid, comm: get_comm(&mut b) }
        }
        kind::EXIT => EventKind::Exit { group_dead: flags & exit_flags::GROUP_DEAD != 0 },
        kind::RENAME => EventKind::Rename { comm: get_comm(&mut b) },
        kind::EPOLL_ENTER => EventKind::EpollEnter {
            call: epoll_call_of(flags),
            epfd: b.get_i32_le(),
            maxevents: b.get_i32_le(),
            timeout_ns: b.get_i64_le(),
        },
        kind::EPOLL_EXIT => EventKind::EpollExit { call: epoll_call_of(flags), ret: b.get_i64_le() },
        kind::USER_TASK => {
            let probe = b.get_u32_le();
            b.advance(4);
            let mut args = [0u64; USER_TASK_ARGS];
            for a in &mut args {
                *a = b.get_u64_le();
            }
            EventKind::UserTask { probe, args, ip: b.get_u64_le() }
        }
        kind::CPU_SAMPLE => EventKind::CpuSample {
            user_stack: b.get_i32_le(),
            kernel_stack: b.get_i32_le(),
            user_ip: b.get_u64_le(),
        },
        kind::MMAP_EXEC => EventKind::MmapExec { addr: b.get_u64_le(), len: b.get_u64_le() },
        kind::CGROUP => {
            let mut hierarchies = [0u32; abi::cgroup_slot::COUNT];
            for h in &mut hierarchies {
                *h = b.get_u32_le();
            }
            b.advance(4);
            let mut cgroups = [(0u32, 0u64); abi::cgroup_slot::COUNT];
            for (c, h) in cgroups.iter_mut().zip(hierarchies) {
                *c = (h, b.get_u64_le());
            }
            EventKind::Cgroup(CgroupChange {
                cgroups,
                fork: flags & abi::cgroup_flags::FORK != 0,
                threadgroup: flags & abi::cgroup_flags::THREADGROUP != 0,
                filter_in: flags & abi::cgroup_flags::FILTER_IN != 0,
                filter_out: flags & abi::cgroup_flags::FILTER_OUT != 0,
            })
        }
        // record_size() knows exactly the kinds matched above.
        _ => return Ok(Decoded::Unknown { kind: k, size }),
    };
    Ok(Decoded::Event(Event { ts, cpu, tid, pid, kind }, size))
}

/// One record's bytes, read field after field from an array of the largest record's size: every
/// record is read at positions known once `decode` is inlined, so the compiler drops the bounds
/// checks a slice reader would make per field (a fifth of a report's reading thread). Fields
/// past the record's own size are never read.
struct Fields<'a> {
    bytes: &'a [u8; abi::MAX_RECORD_SIZE],
    pos: usize,
}

impl Fields<'_> {
    #[inline(always)]
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(field) = self.bytes.get(self.pos..self.pos + N) {
            out.copy_from_slice(field);
        }
        self.pos += N;
        out
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
    }
    fn get_u64_le(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn get_i64_le(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn get_u32_le(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn get_i32_le(&mut self) -> i32 {
        i32::from_le_bytes(self.take())
    }
    fn get_u16_le(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn get_i16_le(&mut self) -> i16 {
        i16::from_le_bytes(self.take())
    }
}

/// A record's (user, kernel) stack ids; none in a legacy record, which ends before them.
fn stacks(b: &mut Fields<'_>, legacy: bool) -> (i32, i32) {
    if legacy { (abi::NO_STACK, abi::NO_STACK) } else { (b.get_i32_le(), b.get_i32_le()) }
}

fn get_comm(b: &mut Fields<'_>) -> Comm {
    Comm(b.take())
}

fn epoll_call_of(flags: u32) -> EpollCall {
    match flags {
        epoll_call::EPOLL_PWAIT => EpollCall::Pwait,
        epoll_call::EPOLL_PWAIT2 => EpollCall::Pwait2,
        _ => EpollCall::Wait,
    }
}

impl EventKind {
    /// Whether this event shows that the thread it was recorded for was running on its CPU at
    /// its timestamp: probes fire in their thread's own context, and a CPU sample interrupts
    /// whoever runs (the perf event's timer cannot fire inside the switch, where interrupts are
    /// off). A switch names its outgoing thread, which is handled with the switch itself; a
    /// rename may be done to another thread.
    pub fn proves_current(&self) -> bool {
        !matches!(self, EventKind::Switch(_) | EventKind::Rename { .. } | EventKind::Cgroup(_))
    }
}

impl Event {
    /// Threads this event names besides the current one (for task-table lookups).
    pub fn other_tids(&self) -> impl Iterator<Item = (u32, u32)> {
        let other = match self.kind {
            EventKind::Switch(s) => Some((s.next_tid, s.next_pid)),
            EventKind::Waking(w) | EventKind::Wakeup(w) | EventKind::WakeupNew(w) => Some((w.tid, w.pid)),
            EventKind::Migrate { tid, pid, .. } => Some((tid, pid)),
            EventKind::Fork { child_tid, child_pid, .. } => Some((child_tid, child_pid)),
            _ => None,
        };
        other.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_round_trips() {
        let raw = crate::trace::synthetic::switch(42, 1, (10, 10), (11, 10), 1, false);
        let Decoded::Event(e, size) = decode(&raw).unwrap() else { panic!("not an event") };
        assert_eq!(size, 96);
        assert_eq!((e.ts, e.cpu, e.tid, e.pid), (42, 1, 10, 10));
        let EventKind::Switch(s) = e.kind else { panic!("not a switch") };
        assert_eq!((s.next_tid, s.next_pid, s.prev_state, s.preempt), (11, 10, 1, false));
        assert_eq!((s.prev_vruntime, s.next_vruntime, s.prev_weight), (1000, 2000, 1024));
    }

    #[test]
    fn every_kind_decodes_from_its_own_size() {
        for raw in [
            crate::trace::synthetic::wake(kind::WAKING, 1, 0, (1, 1), (2, 2)),
            crate::trace::synthetic::migrate(1, 0, (2, 2), 0, 1),
            crate::trace::synthetic::fork(1, (1, 1), (2, 1), "worker"),
            crate::trace::synthetic::rename(1, (2, 1), "renamed"),
            crate::trace::synthetic::exit(1, (2, 1), true),
            crate::trace::synthetic::epoll_enter(1, (2, 1), -1),
            crate::trace::synthetic::epoll_exit(1, (2, 1), 3),
        ] {
            match decode(&raw).unwrap() {
                Decoded::Event(_, size) => assert_eq!(size, raw.len()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn fork_carries_thread_flag_and_comm() {
        let raw = crate::trace::synthetic::fork(5, (100, 100), (101, 100), "worker-1");
        let Decoded::Event(e, _) = decode(&raw).unwrap() else { panic!() };
        let EventKind::Fork { child_tid, thread, comm, .. } = e.kind else { panic!() };
        assert_eq!((child_tid, thread, comm.to_string().as_str()), (101, true, "worker-1"));
    }

    #[test]
    fn wrong_sizes_and_short_buffers_are_errors() {
        let mut raw = crate::trace::synthetic::switch(1, 0, (1, 1), (2, 2), 0, true);
        assert!(matches!(decode(&raw[..10]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&raw[..40]), Err(DecodeError::Short { .. })));
        raw[9] = 40;
        assert!(matches!(decode(&raw), Err(DecodeError::BadSize { .. })));
    }

    #[test]
    fn unknown_kinds_are_skipped_by_their_size() {
        let mut raw = crate::trace::synthetic::exit(1, (1, 1), false);
        raw[8] = 200;
        assert_eq!(decode(&raw).unwrap(), Decoded::Unknown { kind: 200, size: 24 });
        raw[9] = 7;
        assert!(decode(&raw).is_err());
    }
}
