"""Decodes sched-trace's exports with other people's code and prints what they hold, as JSON.

usage: decode_export.py perfetto FILE | decode_export.py chrome-json FILE

Perfetto traces are parsed with the protobuf classes Perfetto itself ships (the PyPI `perfetto`
package's perfetto_trace_pb2), Chrome JSON with Python's json module: nothing of sched-trace's
own is used to read them back.
"""

import collections
import json
import sys

# Track ids sched-trace's Chrome JSON uses for made-up processes and threads (export/chrome.rs).
CPUS_PID = 1 << 30
TASK_TID_BASE = 1 << 30


def perfetto(path):
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    trace = pb.Trace()
    with open(path, "rb") as f:
        trace.ParseFromString(f.read())
    kinds = collections.Counter()
    kind_of = {}
    events = collections.defaultdict(list)
    for packet in trace.packet:
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            if d.HasField("thread"):
                kind = "thread"
            elif d.HasField("process"):
                kind = "process"
            elif d.name.startswith("CPU "):
                kind = "cpu"
            elif d.name.startswith("task ") and d.HasField("parent_uuid"):
                kind = "task"
            else:
                kind = "other"
            kinds[kind] += 1
            kind_of[d.uuid] = kind
        elif packet.HasField("track_event"):
            e = packet.track_event
            events[e.track_uuid].append((packet.timestamp, e.type, e.name))
    slices = collections.Counter()
    problems = []
    for uuid, evs in events.items():
        kind = kind_of.get(uuid, "unknown track")
        depth = 0
        last_ts = 0
        for ts, typ, _name in evs:
            if ts < last_ts:
                problems.append(f"track {uuid}: time goes back at {ts}")
            last_ts = ts
            if typ == pb.TrackEvent.TYPE_SLICE_BEGIN:
                depth += 1
                slices[kind] += 1
            elif typ == pb.TrackEvent.TYPE_SLICE_END:
                depth -= 1
                if depth < 0:
                    problems.append(f"track {uuid}: an end without a begin at {ts}")
                    depth = 0
        if depth != 0:
            problems.append(f"track {uuid}: {depth} slices never end")
    return {"tracks": dict(kinds), "slices": dict(slices), "problems": problems[:20]}


def chrome(path):
    with open(path) as f:
        doc = json.load(f)
    tracks = collections.Counter()
    slices = collections.Counter()

    def kind(pid, tid):
        if pid == CPUS_PID:
            return "cpu"
        if tid >= TASK_TID_BASE:
            return "task"
        return "thread"

    by_track = collections.defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "thread_name":
            tracks[kind(e["pid"], e["tid"])] += 1
        elif e["ph"] == "M" and e["name"] == "process_name" and e["pid"] != CPUS_PID:
            tracks["process"] += 1
        elif e["ph"] == "X":
            if e["dur"] <= 0:
                raise SystemExit(f"an empty slice: {e}")
            slices[kind(e["pid"], e["tid"])] += 1
            # Microseconds with nanosecond decimals: back to integer nanoseconds.
            start = round(e["ts"] * 1000)
            by_track[(e["pid"], e["tid"])].append((start, start + round(e["dur"] * 1000)))
    # Complete events of one track must nest: each one inside the one open around it, or after
    # it, never sticking out of it (the viewer would draw it on the wrong row or drop it).
    problems = []
    for track, spans in by_track.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends = []
        for start, end in spans:
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends and end > open_ends[-1]:
                problems.append(f"track {track}: slice {start}..{end} sticks out of one ending at {open_ends[-1]}")
            open_ends.append(end)
    return {"tracks": dict(tracks), "slices": dict(slices), "problems": problems[:20]}


if __name__ == "__main__":
    fmt, path = sys.argv[1], sys.argv[2]
    print(json.dumps(perfetto(path) if fmt == "perfetto" else chrome(path)))
