//! The Chrome trace-event JSON format (`chrome://tracing`, Perfetto's legacy JSON importer).
//!
//! Threads are threads of their processes; CPUs are the threads of a made-up "CPUs" process; a
//! user-level task is a made-up thread of its process, numbered past any real thread id.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use serde_json::{Map, Value, json};

use super::{Arg, ExportError, ExportSummary, Slice, Tracks};

/// The made-up process that holds the CPU tracks (beyond any `pid_max`, within an i32, which
/// is what importers read ids as).
pub const CPUS_PID: u32 = 1 << 30;
/// Task tracks are threads `TASK_TID_BASE + n` of their process (the n-th task track; the
/// track's name says the task id).
pub const TASK_TID_BASE: u64 = 1 << 30;
/// The pseudo-process whose threads are the cgroups' throttled tracks.
pub const CGROUPS_PID: u32 = (1 << 30) + 1;

/// Writes `tracks` to `path`.
pub fn write(tracks: &Tracks, path: &Path) -> Result<ExportSummary, ExportError> {
    let io = |source| ExportError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::new(file);
    write_to(tracks, &mut out).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(tracks.summary())
}

/// Writes `tracks` as one JSON object, an event per line.
pub fn write_to(tracks: &Tracks, out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
    let mut first = true;
    let mut event = |out: &mut dyn Write, v: Value| -> std::io::Result<()> {
        if !first {
            out.write_all(b",\n")?;
        }
        first = false;
        serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::from)
    };
    let meta = |pid: u64, tid: u64, what: &str, name: &str| json!({"ph": "M", "pid": pid, "tid": tid, "name": what, "args": {"name": name}});
    for (pid, name) in &tracks.processes {
        event(out, meta(*pid as u64, *pid as u64, "process_name", name))?;
    }
    event(out, meta(CPUS_PID as u64, 0, "process_name", "CPUs"))?;
    for t in &tracks.threads {
        event(out, meta(t.pid as u64, t.tid as u64, "thread_name", &t.name))?;
        for s in &t.slices {
            event(out, complete(t.pid as u64, t.tid as u64, s))?;
        }
    }
    for c in &tracks.cpus {
        event(out, meta(CPUS_PID as u64, c.cpu as u64, "thread_name", &format!("CPU {}", c.cpu)))?;
        for s in &c.slices {
            event(out, complete(CPUS_PID as u64, c.cpu as u64, s))?;
        }
    }
    // Task tracks are numbered in order: task ids can be any 64-bit number, track ids cannot.
    for (n, t) in tracks.tasks.iter().enumerate() {
        let tid = TASK_TID_BASE + n as u64;
        event(out, meta(t.pid as u64, tid, "thread_name", &t.label))?;
        for s in &t.slices {
            event(out, complete(t.pid as u64, tid, s))?;
        }
    }
    if !tracks.cgroups.is_empty() {
        event(out, meta(CGROUPS_PID as u64, 0, "process_name", "Cgroups"))?;
    }
    for (n, g) in tracks.cgroups.iter().enumerate() {
        event(out, meta(CGROUPS_PID as u64, n as u64, "thread_name", &g.name))?;
        for s in &g.slices {
            event(out, complete(CGROUPS_PID as u64, n as u64, s))?;
        }
    }
    out.write_all(b"\n]}\n")
}

/// A complete ("X") event; times in microseconds with nanosecond decimals.
fn complete(pid: u64, tid: u64, s: &Slice) -> Value {
    let args: Map<String, Value> = s
        .args
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Arg::Int(i) => json!(i),
                Arg::Str(s) => json!(s),
            };
            (k.to_string(), v)
        })
        .collect();
    json!({
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "name": s.name,
        "ts": s.start as f64 / 1e3,
        "dur": (s.end - s.start) as f64 / 1e3,
        "args": args,
    })
}
