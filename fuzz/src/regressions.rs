//! Inputs that once made sched-trace panic or blow up, built from code so that what each one
//! does wrong is written down. They are kept in the corpus (`corpus/trace/regress-*.trace`,
//! written by `sched-trace-fuzz regressions`); the corpus test runs every file there.

use sched_trace::trace::{
    TraceInfo, TraceTarget, UserProbe,
    format::ChunkKind,
    synthetic as syn,
    writer::{encode_chunk, encode_header},
};
use sched_trace_abi::{ABI_VERSION, kind};

const P: (u32, u32) = (100, 100);
const W: (u32, u32) = (101, 100);

fn info(user_probes: Vec<UserProbe>) -> TraceInfo {
    TraceInfo {
        abi_version: ABI_VERSION,
        recorder: "sched-trace-fuzz regressions".into(),
        possible_cpus: 2,
        online_cpus: vec![0, 1],
        clock: "CLOCK_MONOTONIC".into(),
        target: TraceTarget::Pids { pids: vec![P.1] },
        user_probes,
        ..Default::default()
    }
}

fn file(info: &TraceInfo, chunks: &[(ChunkKind, Vec<u8>)]) -> Vec<u8> {
    let mut out = encode_header(info).unwrap_or_default();
    for (k, payload) in chunks {
        let _ = encode_chunk(*k as u8, 0, payload, true, &mut out);
    }
    out
}

/// Every regression input, by file name.
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("regress-backwards-switch-in.trace", backwards_switch_in()),
        ("regress-drops-zero-slots.trace", drops_zero_slots()),
        ("regress-huge-task-id.trace", huge_task_id()),
        ("regress-probe-ip-overflow.trace", probe_ip_overflow()),
        ("regress-start-at-end-of-time.trace", start_at_end_of_time()),
    ]
}

/// A thread is seen sleeping from 200 ms; a record of its own from 150 ms comes in a later
/// chunk, beyond the reader's reorder window. The reader handed it out late, and the missed
/// switch-in it implies had its earliest moment after the moment it was seen: `clamp` with a
/// minimum above the maximum panicked (`correlate/threads.rs`).
fn backwards_switch_in() -> Vec<u8> {
    let ms = 1_000_000u64;
    let mut first = syn::switch(100 * ms, 0, (0, 0), P, 0, false);
    first.extend(syn::switch(200 * ms, 0, P, (0, 0), 1, false));
    first.extend(syn::switch(300 * ms, 1, (0, 0), W, 0, false));
    let late = syn::epoll_enter(150 * ms, P, -1);
    file(&info(Vec::new()), &[(ChunkKind::Events, first), (ChunkKind::Events, late)])
}

/// A 44-byte `DROPS` chunk claiming u32::MAX CPUs of zero counters each: the size check
/// (CPUs × slots × 8 + 16 bytes) passed, and the reader reserved a vector per CPU: 96 GiB.
fn drops_zero_slots() -> Vec<u8> {
    let mut drops = u32::MAX.to_le_bytes().to_vec();
    drops.extend(0u32.to_le_bytes());
    drops.extend([0u8; 16]);
    let events = syn::switch(1_000, 0, (0, 0), P, 0, false);
    file(&info(Vec::new()), &[(ChunkKind::Events, events), (ChunkKind::Drops, drops)])
}

/// A runtime task whose id is the largest 64-bit number: the Chrome JSON export numbered the
/// task's track `1 << 30` + the id and overflowed.
fn huge_task_id() -> Vec<u8> {
    let probe = syn::refrt_probe;
    let mut events = syn::switch(1_000, 0, (0, 0), P, 0, false);
    events.extend(syn::user_task(2_000, 0, P, 0, &[u64::MAX, 0, 0]));
    events.extend(syn::user_task(3_000, 0, P, 1, &[u64::MAX, 0, 0, 1]));
    events.extend(syn::switch(9_000, 0, P, (0, 0), 1, false));
    file(&info(vec![probe(0, "task_spawn"), probe(1, "task_run")]), &[(ChunkKind::Events, events)])
}

/// A probe record whose user instruction pointer is the largest address, after a switch-out of
/// its thread that had a user instruction pointer: the reader's check for a probe delayed past
/// its breakpoint computed `ip + 1` and overflowed.
fn probe_ip_overflow() -> Vec<u8> {
    let mut events = syn::switch(1_000, 0, (0, 0), P, 0, false);
    let mut out = syn::switch(2_000, 0, P, (0, 0), 0, true);
    // prev_user_ip of the switch record (after the header, ids, state, prios, vruntimes, weights).
    let at = std::mem::offset_of!(sched_trace_abi::SwitchRecord, prev_user_ip);
    out[at..at + 8].copy_from_slice(&0x40_1000u64.to_le_bytes());
    events.extend(out);
    let mut probe = syn::user_task(3_000, 0, P, 0, &[1]);
    let ip = std::mem::offset_of!(sched_trace_abi::UserTaskRecord, ip);
    probe[ip..ip + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    events.extend(probe);
    events.extend(syn::wake(kind::WAKEUP, 4_000, 1, W, P));
    file(&info(Vec::new()), &[(ChunkKind::Events, events)])
}

/// A recording that claims to start at the last nanosecond of the clock: the heat map's window
/// end, one past the start, overflowed.
fn start_at_end_of_time() -> Vec<u8> {
    let mut facts = info(Vec::new());
    facts.start_ns = u64::MAX;
    let events = syn::switch(u64::MAX, 0, (0, 0), P, 0, false);
    file(&facts, &[(ChunkKind::Events, events)])
}
