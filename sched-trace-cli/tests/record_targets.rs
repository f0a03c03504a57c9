//! What `record` can trace besides a program with USDT notes: a shell script (and the programs
//! it runs, whose probes are attached when they start), a statically linked stripped binary, and
//! a running process whose executable was deleted. Each is traced with the kernel probes, says
//! in one line why no USDT probes were read where that applies, and shows a known sleeper's
//! sleeps.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// A statically linked, stripped C program that sleeps 20 ms `argv[1]` times and exits 3.
fn static_sleeper(dir: &Path) -> PathBuf {
    let src = dir.join("sleeper.c");
    std::fs::write(
        &src,
        "#include <stdlib.h>\n#include <time.h>\n\
         int main(int argc, char **argv) {\n\
           struct timespec t = {0, 20000000};\n\
           for (int i = 0, n = argc > 1 ? atoi(argv[1]) : 10; i < n; i++) nanosleep(&t, 0);\n\
           return 3;\n\
         }\n",
    )
    .unwrap();
    let exe = dir.join("sleeper");
    let o = output(Command::new("gcc").args(["-O2", "-static", "-s", "-o"]).arg(&exe).arg(&src));
    assert!(o.status.success(), "gcc -static: {}", stderr(&o));
    let file = output(Command::new("file").arg(&exe));
    let what = String::from_utf8_lossy(&file.stdout);
    assert!(what.contains("statically linked") && what.contains("stripped"), "{what}");
    exe
}

/// Sleeps of 19–30 ms of the threads named `comm` in a report.
fn twenty_ms_sleeps(report: &Value, comm: &str) -> u64 {
    let threads = report["threads"].as_array().unwrap();
    let ours: Vec<&Value> = threads.iter().filter(|t| t["comm"] == comm).collect();
    assert!(!ours.is_empty(), "no thread named {comm} in {}", report["threads"]);
    ours.iter()
        .map(|t| {
            let s = &t["sleeps"];
            // Its sleeps are 20 ms (a launched command also has one more: its wait, held before
            // its exec, for the recorder to attach).
            let (n, p50) = (s["count"].as_u64().unwrap(), s["p50_ns"].as_u64().unwrap());
            if n > 0 {
                assert!((19_000_000..=30_000_000).contains(&p50), "{comm}: sleeps {s}");
            }
            n
        })
        .sum()
}

#[test]
fn a_shell_script_is_traced_with_the_programs_it_runs() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sleeper = static_sleeper(dir.path());
    let script = dir.path().join("run.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{} 10\n{} pingpong --duration 0.2 > /dev/null\nexit 5\n",
            sleeper.display(),
            refrt().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let trace = dir.path().join("script.trace");
    let o = output(sched_trace().args(["record", "--quiet", "-o"]).arg(&trace).arg("--").arg(&script));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "the script's own exit status: {err}");
    assert!(
        err.contains("USDT probes of") && err.contains("run.sh") && err.contains("it is a script"),
        "one line says why the script's probes were not read: {err}"
    );
    let r = report_json(&trace);
    assert_eq!(r["lost"]["total"], 0, "{}", r["lost"]);
    assert!(r["processes"].as_array().unwrap().iter().any(|p| p["comm"] == "run.sh"), "{}", r["processes"]);
    assert!(twenty_ms_sleeps(&r, "sleeper") >= 9, "the sleeper's sleeps: {}", r["threads"]);
    // The runtime the script started had its probes attached when it exec'd.
    let hits: u64 = r["user_probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["provider"] == "refrt")
        .map(|p| p["hits"].as_u64().unwrap())
        .sum();
    assert!(hits > 100, "the reference runtime's probes fired under the script: {}", r["user_probes"]);
    assert!(r["tasks"]["tasks_total"].as_u64().unwrap_or(0) > 1, "its tasks are in the report");
}

#[test]
fn a_static_stripped_binary_is_traced() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sleeper = static_sleeper(dir.path());
    let trace = dir.path().join("static.trace");
    let o =
        output(sched_trace().args(["record", "--quiet", "-o"]).arg(&trace).arg("--").arg(&sleeper).arg("10"));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let r = report_json(&trace);
    let sleeps = twenty_ms_sleeps(&r, "sleeper");
    assert!(sleeps == 10 || sleeps == 11, "ten 20 ms sleeps (and the held start): {}", r["threads"]);
    assert!(r["user_probes"].as_array().unwrap().is_empty());
}

#[test]
fn a_process_whose_executable_was_deleted_is_traced_by_pid() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sleeper = static_sleeper(dir.path());
    // It outlives the recording whatever the recorder's start-up takes (a debug build reads the
    // kernel's BTF for a second or more); it is killed after.
    let mut running = Command::new(&sleeper).arg("1000").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(&sleeper).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", running.id())).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{}", exe.display());
    let trace = dir.path().join("deleted.trace");
    let o = output(
        sched_trace()
            .args(["record", "--quiet", "-d", "1s", "-p", &running.id().to_string(), "-o"])
            .arg(&trace),
    );
    let _ = running.kill();
    let _ = running.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report_json(&trace);
    let sleeps = twenty_ms_sleeps(&r, "sleeper");
    // One 20 ms sleep (and a few µs of running) after another, for as long as the trace lasts.
    let expected = r["trace"]["duration_ns"].as_u64().unwrap() / 20_000_000;
    assert!(
        expected >= 40 && sleeps * 10 >= expected * 8 && sleeps <= expected + 1,
        "{sleeps} sleeps in {expected} periods"
    );
}
