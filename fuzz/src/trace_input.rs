//! The trace file target: a trace taken apart into its recording facts and its chunks (payloads
//! decoded), mutated field by field, record by record and chunk by chunk, put back together with
//! every length, checksum, compression and column layout redone, and run through everything that
//! reads a trace: the reader, the correlation (with and without timelines), the report (text,
//! JSON, filtered), the export (Perfetto, Chrome JSON), the heat maps, the flame graphs and the
//! dump.

use std::{io::Cursor, mem::offset_of, path::Path};

use sched_trace::{
    correlate::{self, Metric},
    export, flamegraph, heatmap,
    report::{self, Filter, Report},
    trace::{
        self, TraceReader, columnar,
        format::{CHUNK_COLUMNAR, ChunkKind},
        synthetic as syn,
        writer::{encode_chunk, frame_header},
    },
};
use sched_trace_abi::{RecordHeader, kind};
use sched_trace_flamegraph::FlameKind;
use serde_json::Value;

use crate::{Outcome, Rng, Target};

pub struct TraceFile;

impl Target for TraceFile {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn mutate(&self, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        match Model::parse(seed) {
            Some(mut m) => {
                m.mutate(rng);
                m.encode()
            }
            None => raw_mutation(seed, rng),
        }
    }

    fn run(&self, input: &[u8]) -> Outcome {
        analyse(input)
    }
}

/// Runs a trace through every analysis; `Refused` with the reader's error for a bad file.
pub fn analyse(input: &[u8]) -> Outcome {
    let path = Path::new("fuzz.trace");
    let open = || TraceReader::new(Cursor::new(input), path, input.len() as u64);
    let correlation = match open().and_then(correlate::correlate) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let report = Report::build(path, &correlation);
    let _ = report::text::render(&report, 30);
    serde_json::to_vec(&report).expect("the report encodes as JSON");
    // The filters, on ids the trace has.
    let filters = [
        Filter { pid: correlation.threads.first().map(|t| t.pid), ..Default::default() },
        Filter { tid: correlation.threads.last().map(|t| t.tid), ..Default::default() },
        Filter {
            task: correlation.tasks.first().map(|t| t.task),
            pid: correlation.tasks.first().map(|t| t.pid),
            ..Default::default()
        },
    ];
    for f in &filters {
        let r = Report::build_filtered(path, &correlation, f);
        let _ = report::text::render(&r, 5);
    }
    let with_timelines = match open().and_then(correlate::correlate_with_timelines) {
        Ok(c) => c,
        Err(e) => panic!("the trace read once but not twice: {e}"),
    };
    let tracks = export::Tracks::build(&with_timelines);
    let mut out = Vec::new();
    export::perfetto::write_to(&tracks, &mut out).expect("the Perfetto export encodes");
    out.clear();
    export::chrome::write_to(&tracks, &mut out).expect("the Chrome JSON export encodes");
    // Heat maps: every metric once in a while, drawn in every format, whole and per group.
    let mut cursor = Cursor::new(input);
    if let Ok(pre) = trace::prescan_of(&mut cursor, path, input.len() as u64) {
        let which = input.len() % Metric::COUNT;
        for (i, metric) in [Metric::ALL[which], Metric::Runq].into_iter().enumerate() {
            let mut spec = heatmap::Spec::new(metric);
            if i == 0 {
                spec.per = Some((heatmap::Per::Thread, 3));
                spec.filter.to_s = Some(0.05);
            }
            if let Ok(h) = open()
                .map_err(heatmap::HeatmapError::from)
                .and_then(|r| heatmap::build_from(r, path, &spec, &pre))
            {
                let _ = heatmap::svg::render(&h);
                let _ = heatmap::html::render(&h);
                let _ = heatmap::term::render(&h, 100, heatmap::term::Colours::Plain);
                let _ = heatmap::json::to_value(&h);
            }
        }
    }
    // Flame graphs: every kind once in a while, grouped and weighed every way, drawn. Without
    // opening binaries (the paths in a fuzzed trace name whatever they like).
    let kinds = [FlameKind::OnCpu, FlameKind::OffCpu, FlameKind::Wakeup, FlameKind::OffWake];
    let groups = [
        flamegraph::GroupBy::Task,
        flamegraph::GroupBy::Thread,
        flamegraph::GroupBy::Process,
        flamegraph::GroupBy::None,
    ];
    let mut spec = flamegraph::Spec::new(kinds[input.len() % 4]);
    spec.group_by = groups[(input.len() / 4) % 4];
    spec.read_binaries = false;
    if input.len().is_multiple_of(3) {
        spec.weight = flamegraph::Weight::Samples;
    }
    if input.len().is_multiple_of(5) {
        spec.selection = Some((Metric::ALL[input.len() % Metric::COUNT], (1_000, 10_000_000)));
    }
    if let Ok(f) =
        open().map_err(flamegraph::FlameError::from).and_then(|r| flamegraph::build_from(r, path, &spec, &[]))
    {
        let mut svg = Vec::new();
        let _ = sched_trace_flamegraph::render(&f.lines, f.kind, &f.title, Some(&f.subtitle), &mut svg);
    }
    // What `dump` prints.
    if let Ok(mut r) = open() {
        while let Ok(Some(e)) = r.next_event() {
            let _ = format!("{e:?}");
        }
    }
    Outcome::Analysed
}

/// One chunk of a trace taken apart.
#[derive(Clone, Debug)]
struct ModelChunk {
    kind: u8,
    /// For `EVENTS`: the records back to back.
    payload: Vec<u8>,
    /// Events chunks: written in columns (as the recorder does) or back to back.
    columnar: bool,
    compress: bool,
    /// A byte of the encoded (columnar) payload to overwrite before compression: the column
    /// tables themselves get hostile values.
    tamper: Option<(usize, u8)>,
}

/// A trace taken apart.
#[derive(Clone, Debug)]
struct Model {
    facts: Value,
    chunks: Vec<ModelChunk>,
}

const RECORD_HEADER: usize = std::mem::size_of::<RecordHeader>();

impl Model {
    fn parse(bytes: &[u8]) -> Option<Model> {
        let mut r = TraceReader::new(Cursor::new(bytes), Path::new("seed"), bytes.len() as u64).ok()?;
        let facts = serde_json::to_value(r.info()).ok()?;
        let mut chunks = Vec::new();
        while let Ok(Some(c)) = r.next_raw_chunk() {
            let events = c.kind == ChunkKind::Events as u8;
            chunks.push(ModelChunk {
                kind: c.kind,
                payload: c.payload,
                columnar: events,
                compress: true,
                tamper: None,
            });
        }
        Some(Model { facts, chunks })
    }

    fn encode(&self) -> Vec<u8> {
        let facts = serde_json::to_vec(&self.facts).unwrap_or_default();
        let mut out = frame_header(&facts);
        for c in &self.chunks {
            let (layout, mut payload) = if c.kind == ChunkKind::Events as u8 && c.columnar {
                match columnar::encode(&c.payload) {
                    Ok(p) => (CHUNK_COLUMNAR, p),
                    Err(_) => (0, c.payload.clone()),
                }
            } else {
                (0, c.payload.clone())
            };
            if let Some((at, v)) = c.tamper
                && !payload.is_empty()
            {
                let at = at % payload.len();
                payload[at] = v;
            }
            let _ = encode_chunk(c.kind, layout, &payload, c.compress, &mut out);
        }
        out
    }

    /// Offsets of every record in events chunk `chunk` (those whose framing holds).
    fn records(&self, chunk: usize) -> Vec<(usize, usize)> {
        let p = &self.chunks[chunk].payload;
        let mut out = Vec::new();
        let mut at = 0;
        while at + RECORD_HEADER <= p.len() {
            let size = p[at + offset_of!(RecordHeader, size)] as usize;
            if size < RECORD_HEADER || at + size > p.len() {
                break;
            }
            out.push((at, size));
            at += size;
        }
        out
    }

    fn events_chunks(&self) -> Vec<usize> {
        (0..self.chunks.len()).filter(|&i| self.chunks[i].kind == ChunkKind::Events as u8).collect()
    }

    /// Thread ids, timestamps and user-probe arguments seen in the trace: values that make a
    /// mutated field collide with another record's.
    fn pool(&self, rng: &mut Rng) -> u64 {
        let Some(&c) = rng.pick(&self.events_chunks()) else { return 0 };
        let recs = self.records(c);
        let Some(&(at, size)) = rng.pick(&recs) else { return 0 };
        let p = &self.chunks[c].payload;
        let words = (size - RECORD_HEADER) / 4;
        let field = if words == 0 || rng.one_in(3) {
            [offset_of!(RecordHeader, tid), offset_of!(RecordHeader, pid)][rng.below(2)]
        } else {
            RECORD_HEADER + 4 * rng.below(words)
        };
        u32::from_le_bytes(p[at + field..at + field + 4].try_into().unwrap_or_default()) as u64
    }

    fn mutate(&mut self, rng: &mut Rng) {
        match rng.below(20) {
            0..=6 => self.mutate_record_field(rng),
            7..=8 => self.mutate_timestamp(rng),
            9..=11 => self.mutate_records(rng),
            12 => self.mutate_facts(rng),
            13 => self.mutate_chunks(rng),
            14 => self.mutate_table(rng),
            15 => self.tamper_columns(rng),
            16 => self.mutate_json_chunk(rng),
            17 => {
                for _ in 0..1 + rng.below(8) {
                    self.mutate_record_field(rng);
                }
            }
            _ => self.insert_record(rng),
        }
    }

    fn pick_record(&self, rng: &mut Rng) -> Option<(usize, usize, usize)> {
        let c = *rng.pick(&self.events_chunks())?;
        let &(at, size) = rng.pick(&self.records(c))?;
        Some((c, at, size))
    }

    fn mutate_record_field(&mut self, rng: &mut Rng) {
        let Some((c, at, size)) = self.pick_record(rng) else { return };
        let pooled = self.pool(rng);
        let p = &mut self.chunks[c].payload;
        // A 2-, 4- or 8-byte field anywhere in the record (header included, size byte excepted
        // most of the time: a wrong size is a framing error the decoder reports at once).
        let width = [2usize, 4, 4, 8][rng.below(4)];
        let slots = size / width;
        let off = at + width * rng.below(slots.max(1));
        let v = interesting(rng, pooled);
        let (kind_at, size_at) = (at + offset_of!(RecordHeader, kind), at + offset_of!(RecordHeader, size));
        let (kind, size) = (p[kind_at], p[size_at]);
        p[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
        // Keep the framing most of the time: a wrong kind or size stops the decoder at once.
        if !rng.one_in(20) {
            p[size_at] = size;
        }
        if !rng.one_in(8) {
            p[kind_at] = kind;
        }
    }

    fn mutate_timestamp(&mut self, rng: &mut Rng) {
        let Some((c, at, _)) = self.pick_record(rng) else { return };
        let p = &mut self.chunks[c].payload;
        let ts = u64::from_le_bytes(p[at..at + 8].try_into().unwrap_or_default());
        let new = match rng.below(7) {
            0 => 0,
            1 => u64::MAX,
            2 => ts.wrapping_sub(60_000_000), // beyond the reader's reorder window
            3 => ts.wrapping_sub(1 + rng.below(1_000_000) as u64),
            4 => ts.wrapping_add(1_000_000_000_000),
            5 => ts.wrapping_add(rng.below(100_000) as u64),
            _ => u64::MAX / 2 + rng.next_u64() % 1000,
        };
        p[at..at + 8].copy_from_slice(&new.to_le_bytes());
    }

    /// Swaps, duplicates, deletes and moves whole records (duplicate switch-ins, missing
    /// switch-outs, time running backwards across chunks).
    fn mutate_records(&mut self, rng: &mut Rng) {
        let chunks = self.events_chunks();
        let Some(&c) = rng.pick(&chunks) else { return };
        let recs = self.records(c);
        if recs.is_empty() {
            return;
        }
        let (a_at, a_size) = recs[rng.below(recs.len())];
        let (b_at, b_size) = recs[rng.below(recs.len())];
        let a = self.chunks[c].payload[a_at..a_at + a_size].to_vec();
        match rng.below(4) {
            0 => drop(self.chunks[c].payload.splice(b_at..b_at, a)), // duplicate a before b
            1 => drop(self.chunks[c].payload.splice(a_at..a_at + a_size, std::iter::empty())),
            2 => {
                // Swap a and b (a before b after sorting their offsets).
                let (first, second) = if a_at <= b_at {
                    ((a_at, a_size), (b_at, b_size))
                } else {
                    ((b_at, b_size), (a_at, a_size))
                };
                if first.0 + first.1 > second.0 {
                    return;
                }
                let p = &self.chunks[c].payload;
                let mut out = p[..first.0].to_vec();
                out.extend_from_slice(&p[second.0..second.0 + second.1]);
                out.extend_from_slice(&p[first.0 + first.1..second.0]);
                out.extend_from_slice(&p[first.0..first.0 + first.1]);
                out.extend_from_slice(&p[second.0 + second.1..]);
                self.chunks[c].payload = out;
            }
            _ => {
                // Into another events chunk (later or earlier in the file).
                let Some(&d) = rng.pick(&chunks) else { return };
                self.chunks[c].payload.splice(a_at..a_at + a_size, std::iter::empty());
                let at = rng.pick(&self.records(d)).map_or(0, |r| r.0);
                drop(self.chunks[d].payload.splice(at..at, a));
            }
        }
    }

    /// A record of any kind, with ids and times taken from the trace.
    fn insert_record(&mut self, rng: &mut Rng) {
        let chunks = self.events_chunks();
        let Some(&c) = rng.pick(&chunks) else { return };
        let recs = self.records(c);
        let near = recs.first().map_or(0, |&(at, _)| {
            u64::from_le_bytes(self.chunks[c].payload[at..at + 8].try_into().unwrap_or_default())
        });
        let ts = near.wrapping_add(rng.below(20_000_000) as u64);
        let id = |rng: &mut Rng, m: &Model| m.pool(rng) as u32;
        let (a, b) = ((id(rng, self), id(rng, self)), (id(rng, self), id(rng, self)));
        let cpu = rng.below(4) as u16;
        let probe = rng.below(8) as u32;
        let record = match rng.below(12) {
            0 => syn::switch(ts, cpu, a, b, [0, 1, 2, 0x80, 0x400][rng.below(5)], rng.one_in(2)),
            1 => syn::wake(kind::WAKING, ts, cpu, a, b),
            2 => syn::wake(kind::WAKEUP, ts, cpu, a, b),
            3 => syn::wake(kind::WAKEUP_NEW, ts, cpu, a, b),
            4 => syn::migrate(ts, cpu, a, rng.below(4) as u32, rng.below(4) as u32),
            5 => syn::fork(ts, a, b, "fuzz"),
            6 => syn::rename(ts, a, "renamed"),
            7 => syn::exit(ts, a, rng.one_in(2)),
            8 => syn::epoll_enter(ts, a, -1),
            9 => syn::epoll_exit(ts, a, 1),
            _ => {
                let args: Vec<u64> = (0..5)
                    .map(|_| {
                        let pooled = self.pool(rng);
                        interesting(rng, pooled)
                    })
                    .collect();
                syn::user_task(ts, cpu, a, probe, &args)
            }
        };
        let at = rng.pick(&recs).map_or(0, |r| r.0);
        self.chunks[c].payload.splice(at..at, record);
    }

    /// A number, a list entry or a name of the recording's facts (the header JSON).
    fn mutate_facts(&mut self, rng: &mut Rng) {
        mutate_json(&mut self.facts, rng);
        // Name probes after the reference runtime's, so that user-task records mean something.
        if rng.one_in(3)
            && let Some(probes) = self.facts.get_mut("user_probes").and_then(Value::as_array_mut)
        {
            const NAMES: [&str; 8] = [
                "task_spawn",
                "task_run",
                "task_park",
                "task_ready",
                "task_exit",
                "block_enter",
                "block_exit",
                "steal",
            ];
            for (i, p) in probes.iter_mut().enumerate().filter(|(_, p)| p.is_object()) {
                p["provider"] = "refrt".into();
                p["name"] = NAMES[(i + rng.below(2)) % NAMES.len()].into();
            }
        }
    }

    fn mutate_chunks(&mut self, rng: &mut Rng) {
        let n = self.chunks.len();
        if n == 0 {
            return;
        }
        let i = rng.below(n);
        match rng.below(7) {
            0 => {
                self.chunks.remove(i);
            }
            1 => {
                let c = self.chunks[i].clone();
                self.chunks.insert(rng.below(n + 1), c);
            }
            2 => self.chunks.swap(i, rng.below(n)),
            3 => self.chunks[i].kind = [1u8, 2, 3, 4, 5, 9, 15, 200][rng.below(8)],
            4 => {
                let len = self.chunks[i].payload.len();
                self.chunks[i].payload.truncate(rng.below(len + 1));
            }
            5 => self.chunks[i].columnar = !self.chunks[i].columnar,
            _ => self.chunks[i].compress = !self.chunks[i].compress,
        }
    }

    /// The binary tables: task entries and drop counters.
    fn mutate_table(&mut self, rng: &mut Rng) {
        let tables: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| [ChunkKind::Tasks as u8, ChunkKind::Drops as u8].contains(&self.chunks[i].kind))
            .collect();
        let Some(&i) = rng.pick(&tables) else { return };
        let pooled = self.pool(rng);
        let c = &mut self.chunks[i];
        if c.kind == ChunkKind::Drops as u8 && c.payload.len() >= 8 && rng.one_in(2) {
            // The CPU and slot counts the rest of the snapshot is sized by.
            let at = 4 * rng.below(2);
            let v = [0u32, 1, 2, 14, 255, 256, 65536, u32::MAX][rng.below(8)];
            c.payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
            if rng.one_in(2) {
                // Make the length agree with the claim when it is small enough to.
                let cpus = u32::from_le_bytes(c.payload[0..4].try_into().unwrap_or_default()) as usize;
                let slots = u32::from_le_bytes(c.payload[4..8].try_into().unwrap_or_default()) as usize;
                if let Some(body) = cpus.checked_mul(slots).filter(|n| *n <= 1 << 16) {
                    c.payload.resize(8 + body * 8 + 16, 0);
                }
            }
            return;
        }
        if c.payload.len() < 8 {
            return;
        }
        let words = c.payload.len() / 4;
        let at = 4 * rng.below(words);
        let v = interesting(rng, pooled) as u32;
        c.payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A hostile byte in the column tables of an events chunk (after the layout is encoded).
    fn tamper_columns(&mut self, rng: &mut Rng) {
        let Some(&c) = rng.pick(&self.events_chunks()) else { return };
        // The count, the group table (kind, size, records), or anywhere.
        let at = if rng.one_in(3) { rng.below(64 * 1024) } else { rng.below(5 + 6 * 14) };
        let v = [0u8, 1, 0x7f, 0x80, 0xff, 24, 88, 13][rng.below(8)];
        let chunk = &mut self.chunks[c];
        chunk.columnar = true;
        chunk.tamper = Some((at, v));
    }

    fn mutate_json_chunk(&mut self, rng: &mut Rng) {
        let json: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| [ChunkKind::Probes as u8, ChunkKind::End as u8].contains(&self.chunks[i].kind))
            .collect();
        let Some(&i) = rng.pick(&json) else { return };
        let c = &mut self.chunks[i];
        match serde_json::from_slice::<Value>(&c.payload) {
            Ok(mut v) if !rng.one_in(8) => {
                mutate_json(&mut v, rng);
                c.payload = serde_json::to_vec(&v).unwrap_or_default();
            }
            _ => c.payload = raw_mutation(&c.payload, rng),
        }
    }
}

/// A value of the kind that breaks code: edges of every width, ids past the kernel's limit,
/// and values taken from elsewhere in the input.
fn interesting(rng: &mut Rng, pooled: u64) -> u64 {
    const EDGES: [u64; 16] = [
        0,
        1,
        2,
        3,
        0x7f,
        0xff,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 22,
        (1 << 22) + 1,
        u64::MAX,
        u64::MAX - 1,
        i64::MAX as u64,
        u64::MAX / 2,
    ];
    match rng.below(4) {
        0 | 1 => pooled.wrapping_add(rng.below(3) as u64).wrapping_sub(1),
        2 => EDGES[rng.below(EDGES.len())],
        _ => rng.next_u64() >> (8 * rng.below(8)),
    }
}

/// Changes one leaf (or list) of a JSON document.
fn mutate_json(v: &mut Value, rng: &mut Rng) {
    mutate_json_at(v, rng, 0)
}

fn mutate_json_at(at: &mut Value, rng: &mut Rng, depth: usize) {
    if depth < 6 && !rng.one_in(5) {
        match at {
            Value::Object(m) if !m.is_empty() => {
                let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
                if let Some(next) = m.get_mut(&k) {
                    return mutate_json_at(next, rng, depth + 1);
                }
            }
            Value::Array(a) if !a.is_empty() && !rng.one_in(4) => {
                let i = rng.below(a.len());
                return mutate_json_at(&mut a[i], rng, depth + 1);
            }
            _ => {}
        }
    }
    *at = match at.take() {
        Value::Number(_) => interesting_json_number(rng),
        Value::String(s) => match rng.below(3) {
            0 => Value::String(String::new()),
            1 => Value::String(s.repeat(3)),
            _ => interesting_json_number(rng),
        },
        Value::Array(mut a) => {
            match rng.below(3) {
                0 => a.clear(),
                1 => {
                    if let Some(x) = a.first().cloned() {
                        a.extend(std::iter::repeat_n(x, 1 + rng.below(8)));
                    }
                }
                _ => a.push(interesting_json_number(rng)),
            }
            Value::Array(a)
        }
        Value::Bool(b) => Value::Bool(!b),
        other if rng.one_in(2) => other,
        _ => Value::Null,
    };
}

fn interesting_json_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::from(u64::MAX),
        1 => Value::from(-1i64),
        2 => Value::from(u32::MAX),
        3 => Value::from(0),
        4 => Value::from(1u64 << 22),
        _ => Value::from(rng.next_u64() >> 40),
    }
}

/// Byte flips, for inputs that no longer take apart.
fn raw_mutation(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    if out.is_empty() {
        return out;
    }
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len());
        out[at] ^= 1 << rng.below(8);
    }
    out
}

/// A small seed made from a real recording: its facts and tables, and its first `events`
/// records in chunks of `per_chunk` (several chunks, so that the reader's carrying of events
/// across chunk boundaries is exercised).
pub fn trim(recording: &[u8], events: usize, per_chunk: usize) -> Option<Vec<u8>> {
    let m = Model::parse(recording)?;
    let mut records = Vec::new();
    for c in m.events_chunks() {
        for (at, size) in m.records(c) {
            if records.len() < events {
                records.push(m.chunks[c].payload[at..at + size].to_vec());
            }
        }
    }
    let mut chunks: Vec<ModelChunk> = Vec::new();
    let table = |c: &ModelChunk| c.kind != ChunkKind::Events as u8 && c.kind != ChunkKind::Drops as u8;
    chunks.extend(m.chunks.iter().filter(|c| table(c) && c.kind != ChunkKind::End as u8).cloned());
    for group in records.chunks(per_chunk.max(1)) {
        chunks.push(ModelChunk {
            kind: ChunkKind::Events as u8,
            payload: group.concat(),
            columnar: true,
            compress: true,
            tamper: None,
        });
    }
    let last = |kind: ChunkKind| m.chunks.iter().rev().find(|c| c.kind == kind as u8).cloned();
    chunks.extend(last(ChunkKind::Drops));
    chunks.extend(last(ChunkKind::End));
    Some(Model { facts: m.facts, chunks }.encode())
}
