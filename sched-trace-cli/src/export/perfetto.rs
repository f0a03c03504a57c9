//! Perfetto's native protobuf trace format (ui.perfetto.dev, trace_processor), written with the
//! `perfetto_protos` crate's bindings of Perfetto's own `.proto` files.
//!
//! Track descriptors first: a process track per process, a thread track per thread (Perfetto
//! files it under its process), a track per CPU, and a track per user-level task under its
//! process. Then each track's slices as TrackEvent begin/end pairs in nesting order, timestamps
//! on the CLOCK_MONOTONIC clock the trace was recorded with.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use perfetto_protos::{
    builtin_clock::BuiltinClock,
    debug_annotation::DebugAnnotation,
    process_descriptor::ProcessDescriptor,
    thread_descriptor::ThreadDescriptor,
    trace_packet::TracePacket,
    track_descriptor::TrackDescriptor,
    track_event::{TrackEvent, track_event::Type},
};
use protobuf::{CodedOutputStream, EnumOrUnknown};

use super::{Arg, ExportError, ExportSummary, Slice, Tracks};

/// The one packet sequence this writer produces.
const SEQUENCE_ID: u32 = 1;
/// `Trace.packet`.
const TRACE_PACKET_FIELD: u32 = 1;

/// Writes `tracks` to `path`.
pub fn write(tracks: &Tracks, path: &Path) -> Result<ExportSummary, ExportError> {
    let io = |source| ExportError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::new(file);
    write_to(tracks, &mut out)
        .map_err(|source| ExportError::Protobuf { path: path.to_path_buf(), source })?;
    out.flush().map_err(io)?;
    Ok(tracks.summary())
}

/// Track uuids: one number space per kind of track.
fn process_uuid(pid: u32) -> u64 {
    1 << 40 | pid as u64
}
fn thread_uuid(tid: u32) -> u64 {
    2 << 40 | tid as u64
}
fn cpu_uuid(cpu: u16) -> u64 {
    3 << 40 | cpu as u64
}
fn task_uuid(index: usize) -> u64 {
    4 << 40 | index as u64
}
fn cgroup_uuid(index: usize) -> u64 {
    5 << 40 | index as u64
}

/// Writes `tracks` as a `perfetto.protos.Trace`, one packet at a time.
pub fn write_to(tracks: &Tracks, out: &mut impl Write) -> Result<(), protobuf::Error> {
    let mut os = CodedOutputStream::new(out);
    let mut first = true;
    let mut packet = |os: &mut CodedOutputStream, mut p: TracePacket| -> Result<(), protobuf::Error> {
        p.set_trusted_packet_sequence_id(SEQUENCE_ID);
        if first {
            // SEQ_INCREMENTAL_STATE_CLEARED: nothing is interned, nothing is carried over.
            p.set_sequence_flags(1);
            first = false;
        }
        os.write_message(TRACE_PACKET_FIELD, &p)
    };
    for (pid, name) in &tracks.processes {
        let mut process = ProcessDescriptor::new();
        process.set_pid(*pid as i32);
        process.set_process_name(name.clone());
        let mut track = TrackDescriptor::new();
        track.set_uuid(process_uuid(*pid));
        track.process = Some(process).into();
        packet(&mut os, descriptor(track))?;
    }
    for t in &tracks.threads {
        let mut thread = ThreadDescriptor::new();
        thread.set_pid(t.pid as i32);
        thread.set_tid(t.tid as i32);
        thread.set_thread_name(t.name.clone());
        let mut track = TrackDescriptor::new();
        track.set_uuid(thread_uuid(t.tid));
        track.thread = Some(thread).into();
        packet(&mut os, descriptor(track))?;
    }
    for c in &tracks.cpus {
        let mut track = TrackDescriptor::new();
        track.set_uuid(cpu_uuid(c.cpu));
        track.set_name(format!("CPU {}", c.cpu));
        packet(&mut os, descriptor(track))?;
    }
    for (i, t) in tracks.tasks.iter().enumerate() {
        let mut track = TrackDescriptor::new();
        track.set_uuid(task_uuid(i));
        track.set_parent_uuid(process_uuid(t.pid));
        track.set_name(t.label.clone());
        packet(&mut os, descriptor(track))?;
    }
    for (i, g) in tracks.cgroups.iter().enumerate() {
        let mut track = TrackDescriptor::new();
        track.set_uuid(cgroup_uuid(i));
        track.set_name(g.name.clone());
        packet(&mut os, descriptor(track))?;
    }

    let tracks_and_slices = tracks
        .threads
        .iter()
        .map(|t| (thread_uuid(t.tid), &t.slices))
        .chain(tracks.cpus.iter().map(|c| (cpu_uuid(c.cpu), &c.slices)))
        .chain(tracks.tasks.iter().enumerate().map(|(i, t)| (task_uuid(i), &t.slices)))
        .chain(tracks.cgroups.iter().enumerate().map(|(i, g)| (cgroup_uuid(i), &g.slices)));
    for (uuid, slices) in tracks_and_slices {
        for (ts, kind, slice) in nesting_order(slices) {
            let mut event = TrackEvent::new();
            event.set_track_uuid(uuid);
            event.type_ = Some(EnumOrUnknown::new(kind));
            if kind == Type::TYPE_SLICE_BEGIN {
                event.set_name(slice.name.clone());
                event.debug_annotations = slice.args.iter().map(|(k, v)| annotation(k, v)).collect();
            }
            let mut p = TracePacket::new();
            p.set_timestamp(ts);
            p.set_timestamp_clock_id(BuiltinClock::BUILTIN_CLOCK_MONOTONIC as u32);
            p.set_track_event(event);
            packet(&mut os, p)?;
        }
    }
    os.flush()
}

fn descriptor(track: TrackDescriptor) -> TracePacket {
    let mut p = TracePacket::new();
    p.set_track_descriptor(track);
    p
}

fn annotation(name: &str, value: &Arg) -> DebugAnnotation {
    let mut a = DebugAnnotation::new();
    a.set_name(name.to_string());
    match value {
        Arg::Int(i) => a.set_int_value(*i),
        Arg::Str(s) => a.set_string_value(s.clone()),
    }
    a
}

/// A track's begin and end events in the order that nests them: by time; at the same time ends
/// before begins, inner ends before outer ends, outer begins before inner begins.
fn nesting_order(slices: &[Slice]) -> Vec<(u64, Type, &Slice)> {
    let mut events: Vec<(u64, u8, i16, Type, &Slice)> = Vec::with_capacity(slices.len() * 2);
    for s in slices {
        events.push((s.start, 1, s.depth as i16, Type::TYPE_SLICE_BEGIN, s));
        events.push((s.end, 0, -(s.depth as i16), Type::TYPE_SLICE_END, s));
    }
    events.sort_by_key(|e| (e.0, e.1, e.2));
    events.into_iter().map(|(ts, _, _, kind, s)| (ts, kind, s)).collect()
}
