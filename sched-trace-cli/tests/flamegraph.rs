//! `sched-trace flamegraph` against workloads whose stacks are known: two hot functions with a
//! known CPU ratio, a sleep and a pipe wait of known lengths, a thread queued behind a hog (the
//! kernel's own run-queue delay as ground truth), and the reference runtime's tasks (the report's
//! per-task CPU time). The SVG is driven in headless Chromium (inferno's search and zoom).

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::Value;
use support::*;

fn stackload() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sched-trace-stackload"))
}

/// Records `sched-trace-stackload MODE` with `record_args`; returns the trace and the
/// workload's ground truth.
fn record_stackload(dir: &Path, mode: &str, record_args: &[&str], extra: &[&str]) -> (PathBuf, Value) {
    let trace = dir.join(format!("{mode}.trace"));
    let truth = dir.join(format!("{mode}.json"));
    let o = output(
        sched_trace()
            .args(["record", "--quiet", "-o"])
            .arg(&trace)
            .args(record_args)
            .arg("--")
            .arg(stackload())
            .arg(mode)
            .arg("--ground-truth")
            .arg(&truth)
            .args(extra),
    );
    assert!(o.status.success(), "recording stackload {mode}: {}", stderr(&o));
    let truth = std::fs::read_to_string(&truth).expect("the workload wrote its ground truth");
    (trace, serde_json::from_str(&truth).expect("ground truth is JSON"))
}

/// `sched-trace flamegraph TRACE ARGS --folded`: the folded lines, frames split.
fn folded(trace: &Path, args: &[&str]) -> Vec<(Vec<String>, u64)> {
    let o = output(sched_trace().arg("flamegraph").arg(trace).args(args).arg("--folded"));
    assert!(o.status.success(), "flamegraph {args:?}: {}", stderr(&o));
    String::from_utf8(o.stdout)
        .expect("folded stacks are text")
        .lines()
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a folded line: {l}"));
            (
                stack.split(';').map(str::to_string).collect(),
                n.parse().unwrap_or_else(|_| panic!("a count: {l}")),
            )
        })
        .collect()
}

/// The weight of the lines whose frames satisfy `pick`.
fn weight(lines: &[(Vec<String>, u64)], pick: impl Fn(&[String]) -> bool) -> u64 {
    lines.iter().filter(|(f, _)| pick(f)).map(|(_, n)| n).sum()
}

fn has(frames: &[String], needle: &str) -> bool {
    frames.iter().any(|f| f.contains(needle))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a number: {v}"))
}

fn close(got: u64, want: u64, rel: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * rel
}

#[test]
fn two_hot_functions_show_their_cpu_ratio_and_the_svg_works_in_a_browser() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, truth) = record_stackload(dir.path(), "hot", &["--sample-hz", "999"], &["--seconds", "4"]);
    let tid = u(&truth["tid"]);
    let thread = format!("sl-hot (tid {tid})");
    let lines = folded(&trace, &["--weight", "samples", "--group-by", "thread"]);
    let (three, one) = (
        weight(&lines, |f| has(f, "sched_trace_stackload::hot_three_parts")),
        weight(&lines, |f| has(f, "sched_trace_stackload::hot_one_part")),
    );
    let measured = u(&truth["hot_three_parts_cpu_ns"]) as f64 / u(&truth["hot_one_part_cpu_ns"]) as f64;
    let ratio = three as f64 / one.max(1) as f64;
    assert!(one > 300, "samples in hot_one_part: {one} (999 Hz for 1 s of its CPU time)");
    assert!((ratio - 3.0).abs() <= 0.4, "samples {three}:{one} = {ratio:.2} (measured {measured:.2})");
    assert!((ratio - measured).abs() <= 0.4, "samples {ratio:.2}, measured CPU times {measured:.2}");
    assert!(lines.iter().filter(|(f, _)| has(f, "hot_")).all(|(f, _)| f[1] == thread), "the thread's frames");

    // Weighed by time (the default), the thread's total is its on-CPU time, which the thread
    // measured (its CPU clock) for the hot functions.
    let timed = folded(&trace, &["--group-by", "thread"]);
    let hot_ns = weight(&timed, |f| f[1] == thread && (has(f, "hot_three_parts") || has(f, "hot_one_part")));
    let cpu = u(&truth["hot_three_parts_cpu_ns"]) + u(&truth["hot_one_part_cpu_ns"]);
    let mut elsewhere: Vec<&(Vec<String>, u64)> = timed
        .iter()
        .filter(|(f, _)| f[1] == thread && !(has(f, "hot_three_parts") || has(f, "hot_one_part")))
        .collect();
    elsewhere.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    assert!(
        close(hot_ns, cpu, 0.05),
        "hot functions' time {hot_ns} ns, measured {cpu} ns; the thread's other stacks: {:?}",
        &elsewhere[..elsewhere.len().min(5)]
    );

    // The SVG, driven in a browser: inferno's search finds hot_one_part at its share, and a
    // click on its frame zooms to it.
    let svg = dir.path().join("hot.svg");
    let o =
        output(sched_trace().arg("flamegraph").arg(&trace).args(["--group-by", "thread", "-o"]).arg(&svg));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("% of frames named"), "{}", stderr(&o));
    let total = weight(&timed, |_| true);
    let share = 100.0 * weight(&timed, |f| has(f, "hot_one_part")) as f64 / total as f64;
    check_svg_in_chromium(
        &svg,
        "hot_one_part",
        share,
        "sched_trace_stackload::hot_one_part",
        "flamegraph-hot",
    );
}

/// Opens `svg` in headless Chromium inside a page that, once it loaded, calls inferno's
/// `search(term)` and clicks the widest frame named `zoom_to`; checks the matched share, that
/// the frame fills the width once zoomed, that frames off its path are hidden, and that no
/// script error was logged. Keeps a screenshot of the SVG in target/test-artefacts.
fn check_svg_in_chromium(svg: &Path, term: &str, share: f64, zoom_to: &str, name: &str) {
    let Some(mut chrome) = chromium() else { return };
    let page = svg.with_extension("html");
    let script = format!(
        r##"<!doctype html><meta charset="utf-8"><iframe id="f" src="{src}" width="1200" height="900"></iframe>
<pre id="result">not run</pre>
<script>
const out = {{ errors: [] }};
const f = document.getElementById("f");
f.addEventListener("load", () => {{
  setTimeout(() => {{
    try {{
      const w = f.contentWindow, d = f.contentDocument;
      w.addEventListener("error", e => out.errors.push(String(e.message)));
      w.search({term:?});
      out.matched = d.getElementById("matched").textContent;
      out.highlighted = [...d.querySelectorAll("#frames rect")].filter(r => r.getAttribute("fill") == w.searchcolor).length;
      const frames = [...d.querySelectorAll("#frames > g")];
      const named = frames.filter(g => g.querySelector("title").textContent.startsWith({zoom:?}));
      named.sort((a, b) => b.querySelector("rect").getBoundingClientRect().width - a.querySelector("rect").getBoundingClientRect().width);
      const g = named[0];
      const svgWidth = d.documentElement.getBoundingClientRect().width;
      out.before = g.querySelector("rect").getBoundingClientRect().width / svgWidth;
      g.dispatchEvent(new MouseEvent("click", {{ bubbles: true }}));
      out.after = g.querySelector("rect").getBoundingClientRect().width / svgWidth;
      out.hidden = d.querySelectorAll("#frames > g.hide").length;
      out.frames = frames.length;
      out.unzoom = !d.getElementById("unzoom").classList.contains("hide");
    }} catch (e) {{ out.errors.push(String(e)); }}
    document.getElementById("result").textContent = JSON.stringify(out);
  }}, 100);
}});
</script>"##,
        src = svg.file_name().unwrap().to_string_lossy(),
        zoom = zoom_to,
    );
    std::fs::write(&page, script).unwrap();
    let o = output(
        chrome
            .args([
                "--allow-file-access-from-files",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
            ])
            .arg("--dump-dom")
            .arg(format!("file://{}", page.display())),
    );
    assert!(o.status.success(), "chromium: {}", stderr(&o));
    let console: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
        .map(str::to_string)
        .collect();
    assert!(console.is_empty(), "script errors: {console:?}");
    let dom = String::from_utf8_lossy(&o.stdout);
    let at = dom.find("<pre id=\"result\">").expect("the page ran") + "<pre id=\"result\">".len();
    let text = dom[at..at + dom[at..].find("</pre>").unwrap()].replace("&quot;", "\"");
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let matched: f64 = r["matched"]
        .as_str()
        .and_then(|m| m.strip_prefix("Matched: "))
        .and_then(|m| m.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("search says what it matched: {r}"));
    assert!((matched - share).abs() < 0.5, "search matched {matched}%, the frames hold {share:.1}%");
    assert!(u(&r["highlighted"]) > 0, "{r}");
    let (before, after) = (r["before"].as_f64().unwrap(), r["after"].as_f64().unwrap());
    assert!(before < 0.9 && after > 0.95, "zoomed from {before:.2} to {after:.2} of the width: {r}");
    assert!(u(&r["hidden"]) > 0 && r["unzoom"] == true, "frames off the path hide: {r}");
    let shot = artefacts().join(format!("{name}.png"));
    let mut screenshot = chromium().unwrap();
    let o = output(
        screenshot.arg(format!("--screenshot={}", shot.display())).arg(format!("file://{}", svg.display())),
    );
    assert!(o.status.success() && shot.exists(), "screenshot: {}", stderr(&o));
}

#[test]
fn sleeps_pipe_waits_and_run_queue_waits_are_weighted_by_their_lengths() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, truth) = record_stackload(dir.path(), "offcpu", &["--stacks", "offcpu"], &[]);
    let lines = folded(&trace, &["--kind", "offcpu", "--group-by", "thread"]);
    let of = |tid: &Value| format!("(tid {})", u(tid));
    let (sleeper, queued) = (of(&truth["sleeper_tid"]), of(&truth["queued_tid"]));
    let on = |thread: &str, f: &[String]| f.len() > 1 && f[1].ends_with(thread);

    // Each wait under the function that made it, by name, as long as the workload measured it
    // (the blocked part and the wait for a CPU after it together).
    let slept = weight(&lines, |f| on(&sleeper, f) && has(f, "sched_trace_stackload::sleep_in_nanosleep"));
    let piped = weight(&lines, |f| on(&sleeper, f) && has(f, "sched_trace_stackload::wait_on_pipe"));
    assert!(close(slept, u(&truth["slept_ns"]), 0.05), "sleep {slept} ns, measured {}", truth["slept_ns"]);
    assert!(
        close(piped, u(&truth["pipe_waited_ns"]), 0.05),
        "pipe {piped} ns, measured {}",
        truth["pipe_waited_ns"]
    );
    for (f, _) in lines.iter().filter(|(f, _)| has(f, "wait_on_pipe")) {
        assert!(has(f, "pipe_read"), "the kernel side of the pipe wait: {f:?}");
        assert!(!has(f, "bpf_trace_run"), "no tracing machinery in the stack: {f:?}");
    }

    // The thread behind the hog: its naps, and apart from them its waits for the CPU, which add
    // up to the kernel's own count of its run-queue delay.
    let leaf = |f: &[String], l: &str| f.last().is_some_and(|x| x == l);
    let in_loop =
        |f: &[String]| has(f, "sched_trace_stackload::nap") || has(f, "sched_trace_stackload::burn_a_little");
    let runq = weight(&lines, |f| on(&queued, f) && in_loop(f) && leaf(f, "[runq]"));
    let napped = weight(&lines, |f| on(&queued, f) && has(f, "sched_trace_stackload::nap"));
    let nap_sleep =
        weight(&lines, |f| on(&queued, f) && has(f, "sched_trace_stackload::nap") && leaf(f, "[sleep]"));
    let nap_runq =
        weight(&lines, |f| on(&queued, f) && has(f, "sched_trace_stackload::nap") && leaf(f, "[runq]"));
    let delay = u(&truth["queued_run_delay_ns"]);
    assert!(close(runq, delay, 0.05), "[runq] {runq} ns, the kernel's run_delay {delay} ns");
    assert!(close(napped, u(&truth["napped_ns"]), 0.05), "naps {napped} ns, measured {}", truth["napped_ns"]);
    assert!(
        nap_runq > 0 && nap_sleep > nap_runq,
        "a nap's sleep {nap_sleep} and its wait for the CPU {nap_runq}"
    );

    // A heat map's selection: sl-sleeper's sleeps from 15 to 29 ms are its ten 20 ms sleeps (its
    // pipe waits take 30, and a wait only ever comes out longer: up to 9 ms late is room for the
    // VM's steal, which once made a sleep of this test 25+ ms on CI).
    let tid = u(&truth["sleeper_tid"]).to_string();
    let picked = folded(
        &trace,
        &["--metric", "sleep", "--latency", "15ms..29ms", "--tid", &tid, "--group-by", "thread"],
    );
    assert!(!picked.is_empty());
    for (f, _) in &picked {
        assert!(on(&sleeper, f) && has(f, "sleep_in_nanosleep") && leaf(f, "[sleep]"), "{f:?}");
    }
    let sleeps = weight(&picked, |_| true);
    assert!(close(sleeps, 10 * 20_000_000, 0.05), "the selected sleeps add up to {sleeps} ns");
}

#[test]
fn wakers_stacks_join_the_waits_they_ended() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, truth) = record_stackload(dir.path(), "offcpu", &["--stacks", "offcpu,wakeup"], &[]);
    let sleeper = format!("(tid {})", u(&truth["sleeper_tid"]));
    let chains = folded(&trace, &["--kind", "offwake", "--group-by", "thread"]);
    let pipe: Vec<&Vec<String>> = chains
        .iter()
        .map(|(f, _)| f)
        .filter(|f| f[1].ends_with(&sleeper) && has(f, "wait_on_pipe"))
        .collect();
    assert!(!pipe.is_empty(), "the pipe waits have wakers");
    for f in &pipe {
        let split =
            f.iter().position(|x| x == "--").unwrap_or_else(|| panic!("a `--` between the stacks: {f:?}"));
        assert!(f[split - 1] == "[woken by] sl-feeder", "the waker: {f:?}");
        assert!(
            has(&f[split..], "pipe_write") && has(&f[split..], "offcpu::{{closure}}"),
            "the feeder's write: {f:?}"
        );
    }
    let woken = weight(&chains, |f| f[1].ends_with(&sleeper) && has(f, "wait_on_pipe"));
    assert!(close(woken, u(&truth["pipe_waited_ns"]), 0.05), "pipe waits with wakers {woken} ns");
    let wakers = folded(&trace, &["--kind", "wakeup", "--group-by", "thread"]);
    let feeder_woke = weight(&wakers, |f| {
        f[1].starts_with("sl-feeder") && f.last().is_some_and(|l| l == "[woke] sl-sleeper")
    });
    assert!(
        close(feeder_woke, u(&truth["pipe_waited_ns"]), 0.05),
        "the feeder's wake-ups weigh {feeder_woke} ns"
    );
}

#[test]
fn the_reference_runtime_is_drawn_by_task_with_the_reports_cpu_times() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("mixed.trace");
    let o = output(
        sched_trace()
            .args(["record", "--quiet", "--sample-hz", "999", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(refrt())
            .arg("mixed"),
    );
    assert!(o.status.success(), "recording mixed: {}", stderr(&o));
    // The runtime has exited: its frames are named from the mappings the trace kept.
    let svg = dir.path().join("mixed.svg");
    let o = output(sched_trace().arg("flamegraph").arg(&trace).arg("-o").arg(&svg));
    assert!(o.status.success(), "{}", stderr(&o));
    let named: f64 = stderr(&o)
        .split("% of frames named")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("says how many frames are named: {}", stderr(&o)));
    assert!(named >= 95.0, "{named}% of frames named");

    let report = report_json(&trace);
    let tasks: BTreeMap<u64, u64> = report["tasks"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (u(&t["task"]), u(&t["on_cpu_ns"])))
        .collect();
    let by_task = |lines: &[(Vec<String>, u64)]| {
        let mut m: BTreeMap<u64, u64> = BTreeMap::new();
        for (f, n) in lines {
            if let Some(t) = f.get(1).and_then(|x| x.strip_prefix("task ")) {
                *m.entry(t.parse().unwrap()).or_default() += n;
            }
        }
        m
    };
    let timed = by_task(&folded(&trace, &[]));
    assert_eq!(timed.len(), tasks.len(), "every task with CPU time is in the flame graph");
    for (task, ns) in &tasks {
        let got = timed.get(task).copied().unwrap_or(0);
        assert!(close(got, *ns, 0.05), "task {task}: {got} ns in the flame graph, {ns} ns in the report");
    }
    let lines = folded(&trace, &[]);
    assert!(
        lines.iter().any(|(f, _)| f[1].starts_with("task ") && has(f, "reference_runtime::")),
        "tasks' stacks are the runtime's functions"
    );
    // Sampled, the tasks that ran long have about as many samples as milliseconds of CPU time
    // (999 Hz): the samples went to the task that ran, not just to its thread. A task's runs
    // are short (tens of µs) and the clock does not know them, so its count is about as noisy
    // as a Poisson count: four standard deviations allowed.
    let sampled = by_task(&folded(&trace, &["--weight", "samples"]));
    let long: Vec<(&u64, &u64)> = tasks.iter().filter(|(_, ns)| **ns >= 20_000_000).collect();
    assert!(!long.is_empty(), "tasks with 20 ms of CPU or more: {tasks:?}");
    for (task, ns) in long {
        let n = sampled.get(task).copied().unwrap_or(0);
        let expected = *ns as f64 / 1_001_001.0;
        assert!(
            (n as f64 - expected).abs() <= 4.0 * expected.sqrt() + 2.0,
            "task {task}: {n} samples for {ns} ns"
        );
    }
}

#[test]
fn a_trace_without_stacks_gets_a_clear_error() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (trace, _) = record_stackload(dir.path(), "hot", &["--stacks", "none"], &["--seconds", "1"]);
    for kind in ["oncpu", "offcpu", "wakeup"] {
        let o = output(sched_trace().arg("flamegraph").arg(&trace).args(["--kind", kind, "--folded"]));
        assert!(!o.status.success(), "{kind}");
        let e = stderr(&o);
        assert!(e.contains("recorded without") && e.contains("record --stacks"), "{kind}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    // A differential flame graph of a trace against itself: nothing changed.
    let (hot, _) = record_stackload(dir.path(), "hot", &[], &["--seconds", "1"]);
    let svg = dir.path().join("diff.svg");
    let o = output(sched_trace().arg("flamegraph").arg(&hot).arg("--diff").arg(&hot).arg("-o").arg(&svg));
    assert!(o.status.success(), "{}", stderr(&o));
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(body.contains("<svg") && body.contains("hot_three_parts"), "a differential flame graph");
}
