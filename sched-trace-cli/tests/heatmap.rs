//! `sched-trace heatmap` on traces whose every latency is known: a synthetic one (golden files
//! in every format, each cell checked against how the trace was built), the HTML page driven in
//! headless Chromium, and real recordings of the reference runtime checked against the
//! report and against waits rebuilt from the raw events.

mod support;

use std::{collections::BTreeMap, path::Path};

use sched_trace::{
    correlate::Metric,
    heatmap::{self, Buckets, Spec},
    trace::{Comm, DropCounters, EndInfo, TaskEntry, TaskSource, TraceTarget, TraceWriter, synthetic as syn},
};
use serde_json::Value;
use support::*;

const P: u32 = 400;
const T: (u32, u32) = (P, P);
const W: (u32, u32) = (P + 1, P);
const START: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Ten seconds in which thread T waits for its CPU ten times a second: 1 ms in the even
/// seconds, 20 ms in the odd ones (W takes the CPU meanwhile). Returns every wait as (the
/// moment it ended, its length).
fn write_alternating(path: &Path, seconds: u64, odd_latency: u64) -> Vec<(u64, u64)> {
    let mut info = synthetic_info(TraceTarget::Command { argv: vec!["./app".into()], pid: P }, Vec::new());
    info.start_ns = START;
    let mut w = TraceWriter::create(path, &info).unwrap();
    w.write_tasks(&[
        TaskEntry { ts: START, tid: T.0, pid: P, comm: Comm::new("app"), source: TaskSource::Scan },
        TaskEntry { ts: START, tid: W.0, pid: P, comm: Comm::new("app-helper"), source: TaskSource::Scan },
    ])
    .unwrap();
    let mut waits = Vec::new();
    let mut events = Vec::new();
    events.extend(syn::switch(START + MS, 0, (0, 0), T, 0, false));
    for s in 0..seconds {
        let mut chunk = Vec::new();
        for k in 0..10 {
            let t = START + s * 1_000 * MS + k * 80 * MS + 10 * MS;
            let lat = if s % 2 == 0 { MS } else { odd_latency };
            chunk.extend(syn::switch(t, 0, T, W, 0, true)); // T preempted by W
            chunk.extend(syn::switch(t + lat, 0, W, T, 1, false)); // W sleeps, T runs again
            waits.push((t + lat, lat));
        }
        events.extend(chunk);
        w.write_events(&events).unwrap();
        events.clear();
    }
    w.write_drops(&DropCounters { per_cpu: vec![vec![0; DropCounters::SLOTS]; 2], ..Default::default() })
        .unwrap();
    w.finish(&EndInfo {
        end_ns: START + seconds * 1_000 * MS,
        events: 1 + 20 * seconds,
        stop_reason: "test".into(),
        write_failure: None,
    })
    .unwrap();
    waits
}

/// The cells the waits must land in: (column, bucket row) → count, for columns of `width`.
fn expected_cells(waits: &[(u64, u64)], width: u64, sub: u32) -> BTreeMap<(usize, usize), u64> {
    let b = Buckets::new(sub);
    let mut cells = BTreeMap::new();
    for &(end, ns) in waits {
        *cells.entry((((end - START) / width) as usize, b.row(ns))).or_default() += 1;
    }
    cells
}

/// The cells an SVG draws: (column, bucket row) → count, from the `data-` attributes.
fn svg_cells(svg: &str, panel: &str) -> BTreeMap<(usize, usize), u64> {
    let start = svg.find(&format!("data-panel=\"{panel}\"")).expect("the panel is drawn");
    let end = start + svg[start..].find("</g>").unwrap();
    let attr = |tag: &str, name: &str| -> Option<u64> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[at..].split('"').next()?.parse().ok()
    };
    svg[start..end]
        .split("<rect")
        .filter_map(|tag| {
            Some(((attr(tag, "data-c")? as usize, attr(tag, "data-r")? as usize), attr(tag, "data-n")?))
        })
        .collect()
}

fn json_cells(v: &Value, panel: usize) -> BTreeMap<(usize, usize), u64> {
    let first = v["rows"]["first"].as_u64().unwrap() as usize;
    let mut out = BTreeMap::new();
    for (c, column) in v["panels"][panel]["counts"].as_array().unwrap().iter().enumerate() {
        for (r, n) in column.as_array().unwrap().iter().enumerate() {
            let n = n.as_u64().unwrap();
            if n > 0 {
                out.insert((c, first + r), n);
            }
        }
    }
    out
}

fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, expected, "{name} changed; rerun with UPDATE_GOLDEN=1 if that is intended");
}

fn build(path: &Path, spec: &Spec) -> heatmap::Heatmap {
    let mut h = heatmap::build(path, spec).unwrap();
    h.source.path = "alternating.trace".into(); // not the temporary directory, in golden files
    h
}

#[test]
fn alternating_latencies_land_in_exactly_their_cells_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alternating.trace");
    let waits = write_alternating(&path, 10, 20 * MS);
    let h = build(&path, &Spec::new(Metric::Runq));
    // Ten seconds in about 240 columns of a round width: 50 ms.
    assert_eq!((h.columns().width_ns, h.columns().count), (50 * MS, 200));
    let expected = expected_cells(&waits, 50 * MS, 4);
    assert_eq!(expected.values().sum::<u64>(), 100);
    // 1 ms is in the bucket [917504, 1048576) ns; 20 ms in [16777216, 20971520): whole powers
    // of two of rows around them are shown.
    let b = h.buckets();
    assert_eq!((b.row(MS), b.row(20 * MS)), (79, 96));
    assert_eq!(h.rows, (76, 99));

    let json = heatmap::json::to_value(&h);
    assert_eq!(json["schema"], "sched-trace/heatmap/1");
    assert_eq!(json_cells(&json, 0), expected, "JSON cells");
    assert_eq!(json["panels"][0]["events"], 100);
    assert_eq!(json["panels"][0]["sum_ns"], 50 * MS + 50 * 20 * MS);
    assert_eq!(json["rows"]["edges_ns"].as_array().unwrap().len(), 25);
    assert_eq!(json["rows"]["edges_ns"][3], 917_504);

    let svg = heatmap::svg::render(&h).svg;
    assert_eq!(svg_cells(&svg, "0"), expected, "SVG cells");
    let html = heatmap::html::render(&h);
    assert_eq!(svg_cells(&html, "0"), expected, "the HTML page's cells");

    // The terminal, without colour: a row per line, a shade per cell where the events are.
    let term = heatmap::term::render(&h, 240, heatmap::term::Colours::Plain);
    let lines: Vec<&str> = term.lines().collect();
    let map_lines = &lines[2..2 + 24];
    let mut drawn = BTreeMap::new();
    for (i, line) in map_lines.iter().enumerate() {
        let row = 99 - i;
        for (c, ch) in line.chars().skip(10).take(200).enumerate() {
            if ch != ' ' {
                drawn.insert((c, row), ch);
            }
        }
    }
    assert_eq!(
        drawn.keys().copied().collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "terminal cells"
    );

    golden("heatmap-alternating.json", &format!("{json:#}\n"));
    golden("heatmap-alternating.svg", &svg);
    golden("heatmap-alternating.txt", &term);
}

#[test]
fn filters_windows_rows_and_small_multiples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alternating.trace");
    let waits = write_alternating(&path, 10, 20 * MS);
    // Seconds 2 to 4 of the recording, in 100 ms columns: 20 waits (1 ms in second 2, 20 ms
    // in second 3).
    let mut spec = Spec::new(Metric::Runq);
    spec.filter.from_s = Some(2.0);
    spec.filter.to_s = Some(4.0);
    spec.column_width_ns = Some(100 * MS);
    let h = build(&path, &spec);
    assert_eq!((h.columns().count, h.panels[0].grid.events), (20, 20));
    let inside: Vec<(u64, u64)> = waits
        .iter()
        .filter(|(end, _)| (START + 2_000 * MS..START + 4_000 * MS).contains(end))
        .map(|&(end, ns)| (end - 2_000 * MS, ns))
        .collect();
    assert_eq!(json_cells(&heatmap::json::to_value(&h), 0), expected_cells(&inside, 100 * MS, 4));

    // Another thread selected: nothing; a latency range: only the rows asked for.
    let mut other = Spec::new(Metric::Runq);
    other.filter.tid = Some(W.0);
    assert_eq!(build(&path, &other).panels[0].grid.events, 0);
    let mut named = Spec::new(Metric::Runq);
    named.filter.comm = Some("app".into());
    assert_eq!(build(&path, &named).panels[0].grid.events, 100, "the thread named app");
    named.filter.comm = Some("app-helper".into());
    assert_eq!(build(&path, &named).panels[0].grid.events, 0, "app-helper never waits");
    let mut range = Spec::new(Metric::Runq);
    range.latency_range = Some((512 * 1_000, 2 * MS));
    let h = build(&path, &range);
    assert_eq!(h.rows, (h.buckets().row(512_000), h.buckets().row(2 * MS - 1)));

    // Per thread: one panel (only T waits), with every event; per CPU: CPU 0.
    let mut per = Spec::new(Metric::Runq);
    per.per = Some((heatmap::Per::Thread, 4));
    let h = build(&path, &per);
    assert_eq!(h.panels.len(), 2);
    assert_eq!((h.panels[1].label.as_str(), h.panels[1].grid.events), ("app (tid 400)", 100));
    assert_eq!(h.panels[1].group_args, ["--tid", "400"]);
    assert_eq!(json_cells(&heatmap::json::to_value(&h), 1), json_cells(&heatmap::json::to_value(&h), 0));
    let svg = heatmap::svg::render(&h).svg;
    assert_eq!(svg_cells(&svg, "1").values().sum::<u64>(), 100, "the small multiple is drawn");

    // A task metric on a trace without runtime probes: a clear error saying what is missing.
    let err = heatmap::build(&path, &Spec::new(Metric::TaskQueue)).unwrap_err().to_string();
    assert!(err.contains("no task-queue samples") && err.contains("no user-level runtime probes"), "{err}");
}

#[test]
fn a_diff_shows_where_two_traces_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.trace"), dir.path().join("b.trace"));
    write_alternating(&a, 4, 20 * MS);
    write_alternating(&b, 4, 5 * MS); // the odd seconds wait 5 ms instead of 20
    let d = heatmap::diff(&a, &b, &Spec::new(Metric::Runq)).unwrap();
    let bk = d.this.buckets();
    let (r20, r5, r1) = (bk.row(20 * MS), bk.row(5 * MS), bk.row(MS));
    let (mut plus, mut minus) = (0, 0);
    for c in 0..d.columns() {
        assert_eq!(d.delta(c, r1), 0, "the 1 ms waits are the same in both");
        plus += d.delta(c, r20);
        minus += d.delta(c, r5);
    }
    assert_eq!((plus, minus), (20, -20));
    let v = heatmap::json::diff_to_value(&d);
    assert_eq!(v["schema"], "sched-trace/heatmap-diff/1");
    let svg = heatmap::svg::render_diff(&d).svg;
    assert!(svg.contains("data-n=\"-") && svg.contains("red: more in"), "both signs are drawn");
}

#[test]
fn the_cli_writes_every_format_and_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alternating.trace");
    write_alternating(&path, 3, 20 * MS);
    for ext in ["svg", "html", "json"] {
        let out = dir.path().join(format!("map.{ext}"));
        let o = output(sched_trace().arg("heatmap").arg(&path).args(["--metric", "runq", "-o"]).arg(&out));
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        assert!(std::fs::metadata(&out).unwrap().len() > 500);
    }
    let o = output(sched_trace().arg("heatmap").arg(&path).env("NO_COLOR", "1").env("COLUMNS", "120"));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("run-queue latency") && text.contains("30 events") && !text.contains('\x1b'),
        "{text}"
    );
    let o = output(sched_trace().arg("heatmap").arg(&path).args(["--metric", "cfs-stolen"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no user-level runtime probes"), "{}", stderr(&o));
    let o = output(sched_trace().arg("heatmap").arg(&path).args(["--from", "2", "--to", "1"]));
    assert!(stderr(&o).contains("is not before"), "{}", stderr(&o));
    let o = output(sched_trace().arg("heatmap").arg(&path).args(["--latency-range", "5ms..1ms"]));
    assert!(!o.status.success() && stderr(&o).contains("empty"), "{}", stderr(&o));
}

/// Drives the page in headless Chromium: no script error, a hover over the fullest cell shows
/// that cell, a dragged rectangle counts the events inside it and gives the command line that
/// selects them. Keeps a screenshot in target/test-artefacts.
fn check_page_in_chromium(page: &Path, h: &heatmap::Heatmap, name: &str) {
    let Some(mut dump) = chromium() else { return };
    let url = format!("file://{}#selftest", page.display());
    let o = output(dump.arg("--dump-dom").arg(&url));
    assert!(o.status.success(), "chromium --dump-dom: {}", stderr(&o));
    let dom = String::from_utf8_lossy(&o.stdout);
    let at = dom.find("<pre id=\"selftest\">").expect("the self-test ran and wrote its result")
        + "<pre id=\"selftest\">".len();
    let text = &dom[at..at + dom[at..].find("</pre>").unwrap()];
    let text = text.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["errors"], serde_json::json!([]), "script errors in the page");
    let g = &h.panels[0].grid;
    let cell = |c: usize, r: usize| g.count(c, r);
    let hover = &r["hover"];
    let (c, row) = (hover["cell"][0].as_u64().unwrap() as usize, hover["cell"][1].as_u64().unwrap() as usize);
    assert!(hover["shown"].as_bool().unwrap(), "the tooltip shows: {hover}");
    assert_eq!(hover["count"].as_u64().unwrap(), cell(c, row));
    assert_eq!(cell(c, row), g.max_cell(), "the fullest cell");
    let tip = hover["text"].as_str().unwrap();
    assert!(
        tip.contains(&format!("{} events in this cell", cell(c, row)))
            && tip.contains("column:")
            && tip.contains("p99"),
        "{tip}"
    );
    let s = &r["selection"];
    let (c0, c1) = (s["cols"][0].as_u64().unwrap() as usize, s["cols"][1].as_u64().unwrap() as usize);
    let (r0, r1) = (s["rows"][0].as_u64().unwrap() as usize, s["rows"][1].as_u64().unwrap() as usize);
    let inside: u64 = (c0..=c1).flat_map(|c| (r0..=r1).map(move |r| (c, r))).map(|(c, r)| cell(c, r)).sum();
    assert_eq!(s["total"].as_u64().unwrap(), inside, "the events in the rectangle: {s}");
    assert!(s["listed"].as_u64().unwrap() > 0, "{s}");
    let ours = heatmap::html::selection_command(h, 0, (c0, c1), (r0, r1));
    let (theirs, ours): (Vec<&str>, Vec<&str>) =
        (s["command"].as_str().unwrap().split(' ').collect(), ours.split(' ').collect());
    assert_eq!(theirs.len(), ours.len(), "{theirs:?} / {ours:?}");
    for (a, b) in theirs.iter().zip(&ours) {
        match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => assert!((x - y).abs() < 1e-6, "{a} / {b}"),
            _ => assert_eq!(a, b),
        }
    }
    let shot = artefacts().join(format!("{name}.png"));
    let mut screenshot = chromium().unwrap();
    let o = output(
        screenshot.arg(format!("--screenshot={}", shot.display())).arg(format!("file://{}", page.display())),
    );
    assert!(o.status.success() && shot.exists(), "screenshot: {}", stderr(&o));
}

#[test]
fn the_page_works_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alternating.trace");
    write_alternating(&path, 10, 20 * MS);
    let h = build(&path, &Spec::new(Metric::Runq));
    let page = dir.path().join("alternating.html");
    std::fs::write(&page, heatmap::html::render(&h)).unwrap();
    check_page_in_chromium(&page, &h, "heatmap-alternating");
}

/// A heat map JSON of `trace` from the command line.
fn heatmap_json(trace: &Path, args: &[&str]) -> Value {
    let o = output(sched_trace().arg("heatmap").arg(trace).args(["--format", "json"]).args(args));
    assert!(o.status.success(), "heatmap {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_demo_writes_maps_whose_totals_are_the_reports() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let o = output(sched_trace().args(["demo", "-o"]).arg(dir.path()));
    assert!(o.status.success(), "demo: {}", stderr(&o));
    let trace = dir.path().join("demo.trace");
    for name in ["heatmap-runq.html", "heatmap-runq.svg", "heatmap-task-queue.html"] {
        assert!(dir.path().join(name).exists(), "the demo wrote {name}: {}", stderr(&o));
    }
    let report = report_json(&trace);
    for m in Metric::ALL {
        let expected = report["samples"][m.name()].as_u64().unwrap();
        let v = heatmap_json(&trace, &["--metric", m.name()]);
        let got = v["panels"][0]["events"].as_u64().unwrap();
        let cells: u64 = json_cells(&v, 0).values().sum();
        assert_eq!((got, cells), (expected, expected), "{}: map totals against the report", m.name());
    }
    assert!(
        report["samples"]["runq"].as_u64().unwrap() > 100
            && report["samples"]["task-queue"].as_u64().unwrap() > 100
    );
    // The runtime's picture in the browser.
    let h = heatmap::build(&trace, &Spec::new(Metric::TaskQueue)).unwrap();
    check_page_in_chromium(&dir.path().join("heatmap-task-queue.html"), &h, "demo-heatmap-task-queue");
}

#[test]
fn netpoll_parks_on_the_map_are_the_reports() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, _log) = record_refrt(dir.path(), "netpoll", &[]);
    let report = report_json(&trace);
    let parks = report["samples"]["netpoll"].as_u64().unwrap();
    assert!(parks > 100, "{}", report["samples"]);
    let v = heatmap_json(&trace, &["--metric", "netpoll"]);
    assert_eq!(v["panels"][0]["events"].as_u64().unwrap(), parks);
    let total: u64 =
        report["tasks"]["tasks"].as_array().unwrap().iter().map(|t| t["netpoll_ns"].as_u64().unwrap()).sum();
    let sum = v["panels"][0]["sum_ns"].as_u64().unwrap();
    // The report's netpoll time also holds the parks still open when the trace ended.
    assert!(sum <= total && sum * 100 >= total * 90, "parked {sum} ns on the map, {total} ns in the report");
}

/// Per thread, its waits for a CPU rebuilt straight from the switch and wake-up events:
/// (the moment it got the CPU, how long it waited).
fn raw_waits(trace: &Path) -> Vec<(u64, u64)> {
    use sched_trace::trace::{EventKind, TraceReader};
    let mut reader = TraceReader::open(trace).unwrap();
    let scope = match &reader.info().target {
        TraceTarget::Command { pid, .. } => *pid,
        other => panic!("{other:?}"),
    };
    let (mut since, mut asleep) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    // The launched command starts asleep (held before its exec).
    for &tid in &reader.info().asleep_at_start {
        asleep.insert(tid, true);
    }
    let mut out = Vec::new();
    while let Some(e) = reader.next_event().unwrap() {
        match e.kind {
            EventKind::Switch(s) => {
                if e.pid == scope {
                    if s.preempt || s.prev_state == 0 {
                        since.insert(e.tid, e.ts);
                    } else {
                        asleep.insert(e.tid, true);
                    }
                }
                if s.next_pid == scope {
                    if let Some(t) = since.remove(&s.next_tid) {
                        out.push((e.ts, e.ts - t));
                    }
                    asleep.insert(s.next_tid, false);
                }
            }
            EventKind::Wakeup(w)
                if w.pid == scope && asleep.get(&w.tid) == Some(&true) && !since.contains_key(&w.tid) =>
            {
                since.insert(w.tid, e.ts);
            }
            // A new thread waits for its first run from its wake-up.
            EventKind::WakeupNew(w) if w.pid == scope && !asleep.contains_key(&w.tid) => {
                since.insert(w.tid, e.ts);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn cfs_contention_shows_the_band_the_waits_predict() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, _log) = record_refrt(dir.path(), "cfs-contention", &[]);
    let waits = raw_waits(&trace);
    assert!(waits.len() > 200, "{} waits", waits.len());
    let v = heatmap_json(&trace, &["--metric", "runq"]);
    let b = Buckets::new(v["rows"]["sub_buckets"].as_u64().unwrap() as u32);
    // Where the waits rebuilt from the raw events fall, row by row, against the map's rows.
    let mut rows_raw = BTreeMap::<usize, u64>::new();
    for &(_, ns) in &waits {
        *rows_raw.entry(b.row(ns)).or_default() += 1;
    }
    let mut rows_map = BTreeMap::<usize, u64>::new();
    for ((_, r), n) in json_cells(&v, 0) {
        *rows_map.entry(r).or_default() += n;
    }
    let (raw_total, map_total): (u64, u64) = (rows_raw.values().sum(), rows_map.values().sum());
    assert!(
        raw_total.abs_diff(map_total) * 100 <= raw_total,
        "{map_total} waits on the map, {raw_total} in the events"
    );
    // The band: the rows holding 80% of the raw waits hold at least 75% of the map's.
    let mut by_size: Vec<(usize, u64)> = rows_raw.iter().map(|(r, n)| (*r, *n)).collect();
    by_size.sort_by_key(|r| std::cmp::Reverse(r.1));
    let (mut band, mut held) = (Vec::new(), 0);
    for (r, n) in by_size {
        if held * 5 >= raw_total * 4 {
            break;
        }
        band.push(r);
        held += n;
    }
    let on_map: u64 = band.iter().map(|r| rows_map.get(r).copied().unwrap_or(0)).sum();
    assert!(on_map * 4 >= map_total * 3, "band {band:?}: {on_map} of {map_total} on the map");
    // CFS preempts the runtime's threads for whole slices: the band reaches milliseconds, and
    // the runs of tasks lose that time too.
    assert!(band.iter().any(|&r| b.lower(r) >= MS), "band {band:?}");
    let stolen = heatmap_json(&trace, &["--metric", "cfs-stolen"]);
    let report = report_json(&trace);
    assert_eq!(stolen["panels"][0]["events"], report["samples"]["cfs-stolen"]);
    assert_eq!(
        stolen["panels"][0]["sum_ns"].as_u64().unwrap(),
        report["tasks"]["totals"]["cfs_stolen_ns"].as_u64().unwrap(),
        "every stolen nanosecond is in some run"
    );
    assert!(stolen["panels"][0]["p50_ns"].as_u64().unwrap() >= 100_000, "{}", stolen["panels"][0]["p50_ns"]);
}
