//! `sched-trace export` read back by other people's code: the Perfetto trace with Perfetto's own
//! protobuf classes (PyPI `perfetto`), the Chrome JSON with Python's json module. Both must hold
//! a track per traced thread, per CPU and per user-level task, and every slice of the correlated
//! timelines, properly nested.

mod support;

use std::{collections::BTreeSet, path::Path};

use sched_trace::{
    correlate::{self, RunSegment, SpanState, TaskSpanState},
    trace::TraceReader,
};
use serde_json::Value;
use support::*;

/// What the correlation says the export must hold: (threads, cpus, tasks, thread slices, cpu
/// slices, task slices).
fn expected(trace: &Path) -> [u64; 6] {
    let c = correlate::correlate_with_timelines(TraceReader::open(trace).unwrap()).unwrap();
    let threads: Vec<_> = c.threads.iter().filter(|t| !t.timeline.is_empty()).collect();
    let cpus: BTreeSet<u16> = threads
        .iter()
        .flat_map(|t| &t.timeline)
        .filter_map(|s| match s.state {
            SpanState::Running { cpu, .. } => Some(cpu),
            _ => None,
        })
        .collect();
    let running =
        threads.iter().flat_map(|t| &t.timeline).filter(|s| matches!(s.state, SpanState::Running { .. }));
    let tasks: Vec<_> = c.tasks.iter().filter(|t| !t.timeline.is_empty()).collect();
    let task_slices = tasks
        .iter()
        .flat_map(|t| &t.timeline)
        .filter(|s| !matches!(s.state, TaskSpanState::Segment { what: RunSegment::OnCpu, .. }))
        .count();
    [
        threads.len() as u64,
        cpus.len() as u64,
        tasks.len() as u64,
        threads.iter().map(|t| t.timeline.len() as u64).sum(),
        running.count() as u64,
        task_slices as u64,
    ]
}

fn decode(python: &Path, format: &str, file: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decode_export.py");
    let o = output(std::process::Command::new(python).arg(script).arg(format).arg(file));
    assert!(o.status.success(), "decoding the {format} export: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("the decoder prints JSON")
}

#[test]
fn exports_decode_with_their_formats_own_readers() {
    let Some(_k) = kernel_probes() else { return };
    let Some(python) = python_with_perfetto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("mixed.trace");
    let o = output(
        sched_trace().args(["record", "--quiet", "-o"]).arg(&trace).arg("--").arg(refrt()).arg("mixed"),
    );
    assert!(o.status.success(), "record: {}", stderr(&o));
    let [threads, cpus, tasks, thread_slices, cpu_slices, task_slices] = expected(&trace);
    assert!(threads >= 5 && cpus >= 1 && tasks > 100, "{threads} threads, {cpus} CPUs, {tasks} tasks");
    assert!(
        task_slices > 1000 && thread_slices > 1000,
        "{thread_slices} thread and {task_slices} task slices"
    );

    for format in ["perfetto", "chrome-json"] {
        let out = dir.path().join(format!("mixed.{format}"));
        let o = output(sched_trace().arg("export").arg(&trace).args(["--format", format, "-o"]).arg(&out));
        assert!(o.status.success(), "export --format {format}: {}", stderr(&o));
        let got = decode(&python, format, &out);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        assert_eq!(got["problems"], serde_json::json!([]), "{format}: slices that do not nest");
        assert_eq!(
            [n(&got["tracks"]["thread"]), n(&got["tracks"]["cpu"]), n(&got["tracks"]["task"])],
            [threads, cpus, tasks],
            "{format}: thread, CPU and task tracks ({got})"
        );
        assert_eq!(
            [n(&got["slices"]["thread"]), n(&got["slices"]["cpu"]), n(&got["slices"]["task"])],
            [thread_slices, cpu_slices, task_slices],
            "{format}: slices on thread, CPU and task tracks ({got})"
        );
        assert!(n(&got["tracks"]["process"]) >= 1, "{format}: a process track ({got})");
    }
}

/// The guard of the test above: the Chrome JSON decoder reports slices of one track that do not
/// nest (one sticking out of the slice around it), and none for slices that do.
#[test]
fn the_chrome_decoder_finds_slices_that_do_not_nest() {
    let dir = tempfile::tempdir().unwrap();
    let json = |slices: &[(f64, f64)]| {
        let events: Vec<Value> = slices
            .iter()
            .map(|(ts, dur)| serde_json::json!({"ph": "X", "name": "s", "pid": 1, "tid": 2, "ts": ts, "dur": dur}))
            .collect();
        serde_json::json!({"traceEvents": events}).to_string()
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decode_export.py");
    for (slices, bad) in
        [(&[(0.0, 10.0), (2.0, 3.0), (10.0, 5.0)][..], false), (&[(0.0, 10.0), (5.0, 8.0)][..], true)]
    {
        let file = dir.path().join("t.json");
        std::fs::write(&file, json(slices)).unwrap();
        let o = output(std::process::Command::new("python3").arg(&script).arg("chrome-json").arg(&file));
        assert!(o.status.success(), "{}", stderr(&o));
        let got: Value = serde_json::from_slice(&o.stdout).unwrap();
        let problems = got["problems"].as_array().unwrap();
        assert_eq!(!problems.is_empty(), bad, "{slices:?}: {problems:?}");
    }
}
