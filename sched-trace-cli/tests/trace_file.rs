//! The trace file against bad input: cut off anywhere, bytes flipped, foreign files, lying
//! headers. The reader must return what is whole or a clear error naming the offset, and never
//! panic. Also a golden-file test of the text report on a synthetic trace.

mod support;

use std::path::{Path, PathBuf};

use sched_trace::{
    correlate,
    report::{self, Report},
    trace::{
        Comm, DropCounters, EndInfo, TraceError, TraceInfo, TraceReader, TraceTarget, TraceWriter,
        format::{TaskEntry, TaskSource},
        synthetic as syn,
    },
};
use sched_trace_abi::kind;
use support::*;

const P: u32 = 500;

fn info() -> TraceInfo {
    synthetic_info(TraceTarget::Command { argv: vec!["./app".into()], pid: P }, Vec::new())
}

/// A small but complete recording: two threads taking turns, a ping-pong of wake-ups, a few
/// chunks, a task table, loss counters and an end marker.
fn write_synthetic(path: &Path, compressed: bool) -> u64 {
    let mut w = TraceWriter::create(path, &info()).unwrap();
    w.set_compression(compressed);
    let (a, b) = ((P, P), (P + 1, P));
    w.write_tasks(&[
        TaskEntry { ts: 1_000, tid: P, pid: P, comm: Comm::new("app"), source: TaskSource::Scan },
        TaskEntry { ts: 1_000, tid: P + 1, pid: P, comm: Comm::new("app-worker"), source: TaskSource::Scan },
    ])
    .unwrap();
    let mut ts = 10_000u64;
    let mut events = 0;
    for chunk in 0..4 {
        let mut buf = Vec::new();
        for i in 0..50u64 {
            // a runs, wakes b, sleeps; b runs 20 µs later for 30 µs, wakes a, sleeps.
            buf.extend(syn::switch(ts, 0, (0, 0), a, 0, false));
            buf.extend(syn::wake(kind::WAKING, ts + 5_000, 0, a, b));
            buf.extend(syn::wake(kind::WAKEUP, ts + 5_000, 1, a, b));
            buf.extend(syn::switch(ts + 10_000, 0, a, (0, 0), 1, false));
            buf.extend(syn::switch(ts + 25_000 + i * 10, 1, (0, 0), b, 0, false));
            buf.extend(syn::wake(kind::WAKING, ts + 40_000, 1, b, a));
            buf.extend(syn::wake(kind::WAKEUP, ts + 40_000, 0, b, a));
            buf.extend(syn::switch(ts + 55_000, 1, b, (0, 0), 1, false));
            if chunk == 1 && i == 7 {
                // Moved to CPU 0 while asleep, and back (it wakes on CPU 1 again).
                buf.extend(syn::migrate(ts + 56_000, 1, b, 1, 0));
                buf.extend(syn::migrate(ts + 57_000, 1, b, 0, 1));
                events += 2;
            }
            ts += 60_000;
            events += 8;
        }
        w.write_events(&buf).unwrap();
    }
    w.write_drops(&DropCounters {
        per_cpu: vec![vec![0; DropCounters::SLOTS]; 2],
        malformed: 0,
        unreceived: 0,
    })
    .unwrap();
    w.finish(&EndInfo {
        end_ns: ts,
        events,
        stop_reason: "the command exited (exit status 0)".into(),
        write_failure: None,
    })
    .unwrap();
    events
}

fn read_all(path: &Path) -> Result<(u64, sched_trace::trace::TraceTables), TraceError> {
    let mut r = TraceReader::open(path)?;
    let mut n = 0;
    let mut last = 0;
    while let Some(e) = r.next_event()? {
        assert!(e.ts >= last, "events come out in timestamp order");
        last = e.ts;
        n += 1;
    }
    Ok((n, r.into_tables()?))
}

fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

#[test]
fn a_whole_file_reads_back() {
    for compressed in [true, false] {
        let (_d, path) = temp("whole.trace");
        let written = write_synthetic(&path, compressed);
        let (n, tables) = read_all(&path).unwrap();
        assert_eq!(n, written);
        assert_eq!(tables.end.as_ref().map(|e| e.events), Some(written));
        assert!(tables.truncation.is_none());
        assert_eq!(tables.tasks.len(), 2);
        assert_eq!(tables.drops.as_ref().map(|d| d.lost_records()), Some(0));
    }
}

#[test]
fn a_file_cut_anywhere_reads_up_to_its_last_whole_chunk() {
    let (_d, path) = temp("cut.trace");
    let written = write_synthetic(&path, true);
    let bytes = std::fs::read(&path).unwrap();
    let header_len = sched_trace::trace::format::FILE_HEADER_LEN
        + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut seen_counts = std::collections::BTreeSet::new();
    let (_d2, cut) = temp("cut-copy.trace");
    // Every length through the header and the first chunks, then a stride through the rest.
    for len in (0..bytes.len()).filter(|l| *l < 400 || l % 11 == 0) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match read_all(&cut) {
            Ok((n, tables)) => {
                assert!(len >= header_len, "a cut header cannot read ({len} bytes)");
                assert!(n <= written);
                assert!(tables.end.is_none(), "no end marker in a cut file");
                let t = tables.truncation.clone();
                if let Some(t) = t {
                    assert!(t.offset as usize <= len && t.offset as usize >= header_len);
                    assert_eq!(t.offset + t.discarded_bytes, len as u64);
                }
                seen_counts.insert(n);
            }
            Err(TraceError::NotATrace { .. } | TraceError::Corrupt { .. }) => {
                assert!(len < header_len, "only a cut header is an error, not a cut at {len}")
            }
            Err(e) => panic!("cut at {len}: unexpected error {e}"),
        }
    }
    assert!(seen_counts.len() >= 4, "every whole events chunk adds events: {seen_counts:?}");
}

#[test]
fn flipped_bytes_are_reported_with_their_offset() {
    let (_d, path) = temp("flip.trace");
    write_synthetic(&path, true);
    let bytes = std::fs::read(&path).unwrap();
    let (_d2, bad) = temp("flip-copy.trace");
    // Bytes after the magic (all of the header and first chunk, a stride after): flipping one
    // must give an error naming an offset at or before it, never a panic and never a clean read.
    for pos in (8..bytes.len()).filter(|p| *p < 400 || p % 7 == 0) {
        let mut b = bytes.clone();
        b[pos] ^= 0x5a;
        std::fs::write(&bad, &b).unwrap();
        match read_all(&bad) {
            Err(TraceError::Corrupt { offset, what, .. }) => {
                assert!(
                    offset as usize <= pos.max(20),
                    "offset {offset} after the flipped byte {pos}: {what}"
                )
            }
            Err(TraceError::UnsupportedVersion { .. }) => assert!((8..10).contains(&pos)),
            Err(e) => panic!("flip at {pos}: unexpected {e}"),
            // A flip in a length field can make a chunk run past the end of the file, which
            // reads as a cut-off recording, never as a complete one.
            Ok((_, tables)) => {
                assert!(tables.truncation.is_some() && tables.end.is_none(), "flip at {pos} went unnoticed")
            }
        }
    }
}

#[test]
fn foreign_and_lying_files_are_refused_without_allocating_their_claims() {
    let (_d, path) = temp("foreign");
    std::fs::write(&path, b"\x7fELF\x02\x01\x01\0 definitely not a trace").unwrap();
    assert!(matches!(TraceReader::open(&path), Err(TraceError::NotATrace { .. })));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(TraceReader::open(&path), Err(TraceError::NotATrace { .. })));

    // A header claiming 4 GiB of recording facts.
    let mut b = b"SCHDTRCE".to_vec();
    b.extend(sched_trace::trace::format::FORMAT_VERSION.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(u32::MAX.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let err = TraceReader::open(&path).err().expect("refused");
    assert!(matches!(err, TraceError::Corrupt { offset: 16, .. }), "{err}");

    // A chunk claiming 3 GiB.
    let (_d2, good) = temp("good.trace");
    write_synthetic(&good, true);
    let mut bytes = std::fs::read(&good).unwrap();
    let first_chunk = 20 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    bytes[first_chunk + 8..first_chunk + 12].copy_from_slice(&(3u32 << 30).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = read_all(&path).expect_err("refused");
    assert!(matches!(err, TraceError::Corrupt { offset, .. } if offset == first_chunk as u64), "{err}");

    // A future format version.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[8] = 99;
    std::fs::write(&path, &bytes).unwrap();
    let err = TraceReader::open(&path).err().expect("refused");
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn report_on_a_bad_file_says_what_and_where() {
    let (_d, path) = temp("notes.txt");
    std::fs::write(&path, "these are notes, not a trace").unwrap();
    let o = output(sched_trace().arg("report").arg(&path));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("is not a sched-trace file") && err.contains("notes.txt"), "{err}");

    let o = output(sched_trace().arg("report").arg(path.with_file_name("missing.trace")));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.trace"), "{}", stderr(&o));

    let (_d2, good) = temp("cut.trace");
    write_synthetic(&good, true);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&good, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = output(sched_trace().arg("report").arg(&good));
    assert!(o.status.success(), "a cut file still reports: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("the recording was cut off"), "{text}");
}

#[test]
fn text_report_matches_golden_file() {
    let (_d, path) = temp("golden.trace");
    write_synthetic(&path, true);
    let correlation = correlate::correlate(TraceReader::open(&path).unwrap()).unwrap();
    let report = Report::build(Path::new("golden.trace"), &correlation);
    // The numbers, from how `write_synthetic` built the trace (200 periods k of 60 µs; i = k % 50):
    // a runs 10 µs, sleeps 30 µs until b wakes it, waits 20 µs for CPU 0; b, woken at 5 µs,
    // waits 20 µs + 10 ns·i for CPU 1, runs until 55 µs and sleeps 10 µs. The first wake-up of
    // b comes before anything is known of it (no wait); a's last wait is closed at the end of
    // the trace, 15 µs after its wake-up.
    let thread = |tid: u32| report.threads.iter().find(|t| t.tid == tid).unwrap();
    let (a, b) = (thread(P), thread(P + 1));
    let b_waits: Vec<u64> = (1..200).map(|k| 20_000 + 10 * (k % 50)).collect();
    assert_eq!(a.on_cpu_ns, 200 * 10_000);
    assert_eq!(b.on_cpu_ns, (0..200).map(|k| 30_000 - 10 * (k % 50)).sum::<u64>());
    assert_eq!(a.off_cpu.sleeping_ns, 200 * 30_000);
    assert_eq!(a.off_cpu.runqueue_ns, 199 * 20_000 + 15_000);
    assert_eq!(b.off_cpu.sleeping_ns, 199 * 10_000);
    assert_eq!(b.off_cpu.runqueue_ns, b_waits.iter().sum::<u64>());
    assert_eq!((a.runqueue_latency.count, a.runqueue_latency.max_ns), (199, 20_000));
    let mut sorted = b_waits.clone();
    sorted.sort_unstable();
    assert_eq!(
        (b.runqueue_latency.count, b.runqueue_latency.p50_ns, b.runqueue_latency.max_ns),
        (199, sorted[99], 20_490)
    );
    assert_eq!((a.switches.voluntary, a.switches.involuntary, b.switches.voluntary), (200, 0, 200));
    assert_eq!((a.migrations, b.migrations), (0, 2));
    assert_eq!(
        (a.wakers[0].tid, a.wakers[0].count, b.wakers[0].tid, b.wakers[0].count),
        (P + 1, 200, P, 199)
    );
    let p = &report.processes[0];
    assert_eq!(p.on_cpu_ns, a.on_cpu_ns + b.on_cpu_ns);
    assert_eq!(p.runqueue_latency.count, 398);
    let text = report::text::render(&report, 30);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected =
        std::fs::read_to_string(&golden).expect("tests/golden/report.txt (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(text, expected, "the text report changed; rerun with UPDATE_GOLDEN=1 if that is intended");
}

/// A trace whose chunks are whole but whose records contradict each other: time running back
/// across chunks, a thread switched in twice, a CPU the host did not have, a thread id no kernel
/// hands out, a task run on two threads at once and a park of a task that was not running.
/// `report`, `report --json` and `export` all succeed and state what they could not place.
#[test]
fn a_trace_that_contradicts_itself_is_reported_and_exported_with_counts() {
    let probe = syn::refrt_probe;
    let (a, b) = ((P, P), (P + 1, P));
    let info = synthetic_info(
        TraceTarget::Command { argv: vec!["./app".into()], pid: P },
        vec![probe(0, "task_run"), probe(1, "task_park")],
    );
    let (_d, path) = temp("contradicts.trace");
    let mut w = TraceWriter::create(&path, &info).unwrap();
    let ms = 1_000_000u64;
    let mut first = Vec::new();
    first.extend(syn::switch(10 * ms, 0, (0, 0), a, 0, false));
    first.extend(syn::user_task(12 * ms, 0, a, 0, &[1, 0, 0]));
    first.extend(syn::switch(13 * ms, 1, (0, 0), b, 0, false));
    first.extend(syn::user_task(14 * ms, 1, b, 0, &[1, 0, 1])); // task 1 still runs on a
    first.extend(syn::user_task(16 * ms, 1, b, 1, &[2, 3, u64::MAX])); // task 2 never ran
    first.extend(syn::switch(20 * ms, 1, b, (0, 0), 1, false));
    first.extend(syn::switch(21 * ms, 1, (0, 0), a, 0, false)); // a was running on CPU 0
    first.extend(syn::switch(30 * ms, 1, a, (0, 0), 1, false));
    first.extend(syn::switch(35 * ms, 7, (0, 0), b, 0, false)); // no CPU 7 on this host
    first.extend(syn::wake(kind::WAKEUP, 40 * ms, 0, b, (5_000_000, P))); // no such thread id
    first.extend(syn::switch(140 * ms, 0, (0, 0), b, 0, false));
    first.extend(syn::switch(200 * ms, 0, b, (0, 0), 1, false));
    w.write_events(&first).unwrap();
    // Beyond the reader's reorder window after the chunk before.
    w.write_events(&syn::epoll_enter(100 * ms, b, -1)).unwrap();
    w.write_drops(&DropCounters { per_cpu: vec![vec![0; DropCounters::SLOTS]; 2], ..Default::default() })
        .unwrap();
    w.finish(&EndInfo { end_ns: 200 * ms, events: 13, stop_reason: "test".into(), write_failure: None })
        .unwrap();

    let o = output(sched_trace().arg("report").arg(&path));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for said in [
        "1 events earlier than events before them",
        "1 events naming CPUs the host did not have",
        "1 events naming impossible thread ids",
        "1 task runs that cut another run short",
        "1 task parks or exits off the task's thread",
        "and 1 switch-outs were not reported",
    ] {
        assert!(text.contains(said), "the text report says `{said}`:\n{text}");
    }
    let r = report_json(&path);
    let u = &r["trace"]["unplaced"];
    assert_eq!(u["rejected"], serde_json::json!({"backwards_time": 1, "bad_cpu": 1, "bad_id": 1}), "{u}");
    assert_eq!(u["task_anomalies"], serde_json::json!({"conflicting_runs": 1, "stray_ends": 1}), "{u}");
    assert_eq!(r["trace"]["missed_switch_outs"], 1);
    assert_eq!(r["trace"]["events"], 11, "13 records, 2 dropped");
    for format in ["perfetto", "chrome-json"] {
        let out = path.with_extension(format);
        let o = output(sched_trace().arg("export").arg(&path).args(["--format", format, "-o"]).arg(&out));
        assert!(o.status.success(), "export --format {format}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("contradicts itself") && err.contains("1 events naming CPUs"), "{err}");
        assert!(std::fs::metadata(&out).unwrap().len() > 100);
    }
}
