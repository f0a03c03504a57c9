//! How `sched-trace record` starts and stops: signals, a PID that exits, kill -9, a full disk, a
//! tiny ring buffer, missing privileges, a bad output path. Every path leaves a readable file (or
//! none at all, when nothing was recorded), says what happened, and leaves no probe attached.

mod support;

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use support::*;

fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the recorder has written its header and at least one chunk.
fn wait_for_data(path: &Path) {
    let end = Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < 2_000 {
        assert!(Instant::now() < end, "{} did not grow", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn spawn_record(args: &[&str], out: &Path) -> Child {
    sched_trace()
        .args(["record", "--quiet", "-o"])
        .arg(out)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sched-trace starts")
}

fn finish(child: Child) -> (ExitStatus, String) {
    let o = child.wait_with_output().unwrap();
    (o.status, stderr(&o))
}

/// Programs are released when their last fd closes; give the kernel a moment after a kill.
fn assert_detached() {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = loaded_sched_trace_programs();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "probes still loaded after the recorder stopped: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The check every test here ends with sees every kind of program `record` loads, the USDT
/// program included: while the reference runtime is recorded they are all listed.
#[test]
fn the_detach_check_sees_every_program_record_loads() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("attached.trace");
    let rec = spawn_record(&["--", refrt().to_str().unwrap(), "pingpong", "--duration", "1.5"], &out);
    // The programs are loaded one after another, so a listing taken while `record` starts can
    // hold some of them: wait (bounded) until every kind is there, then check nothing is missing.
    let expected = [
        "usdt",
        "sched_switch",
        "sched_waking",
        "sys_enter_epoll",
        "sched_process_f",
        "sys_enter_mmap",
        "cpu_sample",
    ];
    let all_listed =
        |loaded: &[String]| expected.iter().all(|name| loaded.iter().any(|p| p.starts_with(name)));
    let end = Instant::now() + Duration::from_secs(10);
    let mut loaded = loaded_sched_trace_programs();
    while !all_listed(&loaded) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        loaded = loaded_sched_trace_programs();
    }
    for name in expected {
        assert!(
            loaded.iter().any(|p| p.starts_with(name)),
            "{name} is not listed while recording: {loaded:?}"
        );
    }
    let (status, err) = finish(rec);
    assert!(status.success(), "{err}");
    assert_detached();
}

#[test]
fn sigint_stops_cleanly_and_detaches() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sigint.trace");
    let mut rec = spawn_record(&[], &out);
    wait_for_data(&out);
    signal(&rec, libc::SIGINT);
    let status = wait_timeout(&mut rec, Duration::from_secs(15));
    let (_, err) = finish(rec);
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{err}");
    assert!(err.contains("stopped because SIGINT received"), "{err}");
    assert_detached();
    let r = report_json(&out);
    assert_eq!(r["trace"]["closed_cleanly"], true, "{}", r["trace"]);
    assert_eq!(r["trace"]["stop_reason"], "SIGINT received");
    assert!(r["trace"]["events"].as_u64().unwrap() > 0);
    assert_eq!(r["lost"]["counted"], true);
}

#[test]
fn sigterm_is_passed_to_the_command_whose_exit_code_is_passed_through() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sigterm.trace");
    let mut rec = spawn_record(&["--", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"], &out);
    wait_for_data(&out);
    signal(&rec, libc::SIGTERM);
    let status = wait_timeout(&mut rec, Duration::from_secs(15));
    let (_, err) = finish(rec);
    assert_eq!(status.code(), Some(7), "the command's own exit code: {err}");
    assert_detached();
    let r = report_json(&out);
    assert_eq!(r["trace"]["closed_cleanly"], true);
    assert_eq!(r["trace"]["stop_reason"], "SIGTERM received");
    let procs = r["processes"].as_array().unwrap();
    assert!(procs.iter().any(|p| p["comm"] == "sleep"), "the command's children were followed");
}

#[test]
fn the_command_exit_code_is_passed_through() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exit.trace");
    let o =
        output(sched_trace().args(["record", "--quiet", "-o"]).arg(&out).args(["--", "sh", "-c", "exit 3"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let never = dir.path().join("never.trace");
    let o =
        output(sched_trace().args(["record", "--quiet", "-o"]).arg(&never).arg("--").arg("/no/such/program"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/program"), "{}", stderr(&o));
    assert!(!never.exists(), "no trace is left when the command cannot start");
    assert_detached();
}

#[test]
fn a_traced_pid_that_exits_ends_the_recording() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pid.trace");
    let mut target =
        Command::new("sh").args(["-c", "sleep 1.5; for i in 1 2 3 4 5; do sleep 0.1; done"]).spawn().unwrap();
    let pid = target.id();
    let o = output(sched_trace().args(["record", "--quiet", "-p", &pid.to_string(), "-o"]).arg(&out));
    target.wait().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("every traced process exited (PID {pid})")), "{}", stderr(&o));
    let r = report_json(&out);
    assert_eq!(r["trace"]["closed_cleanly"], true);
    let threads = r["threads"].as_array().unwrap();
    assert!(threads.iter().any(|t| t["tid"] == pid), "the traced process is in the report: {}", r["threads"]);
    assert!(threads.iter().all(|t| t["pid"] == pid), "only the traced process (-p does not follow children)");

    let o = output(sched_trace().args(["record", "-p", "4194303", "-o"]).arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no process with PID 4194303"), "{}", stderr(&o));
}

#[test]
fn kill_9_leaves_a_readable_prefix() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.trace");
    let storm = switch_storm(2_000_000);
    let mut rec = spawn_record(&[], &out);
    wait_for_data(&out);
    std::thread::sleep(Duration::from_millis(700));
    signal(&rec, libc::SIGKILL);
    wait_timeout(&mut rec, Duration::from_secs(5));
    drop(storm);
    assert_detached();
    let o = output(sched_trace().arg("report").arg(&out));
    assert!(o.status.success(), "a killed recording still reports: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("WARNING:"), "the report says the recording was not closed:\n{text}");
    let r = report_json(&out);
    assert_eq!(r["trace"]["closed_cleanly"], false);
    assert!(r["trace"]["events"].as_u64().unwrap() > 1_000, "{}", r["trace"]);
}

#[test]
fn a_full_disk_stops_the_recording_and_keeps_what_was_written() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = output(Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&mnt));
    assert!(m.status.success(), "mount tmpfs: {}", stderr(&m));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let out = mnt.join("full.trace");
    let storm = switch_storm(3_000_000);
    let mut rec = spawn_record(&["-d", "60s"], &out);
    let status = wait_timeout(&mut rec, Duration::from_secs(60));
    drop(storm);
    let (_, err) = finish(rec);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("full.trace"), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "the OS error, once: {err}");
    assert!(
        err.contains("are not in the file") && err.contains("closed with an end marker that says so"),
        "the summary says what is missing: {err}"
    );
    assert_detached();
    let r = report_json(&out);
    assert_eq!(r["trace"]["closed_cleanly"], true, "the end marker went into the space kept for it");
    assert!(r["trace"]["truncated"].is_null(), "the partial chunk was overwritten: {}", r["trace"]);
    assert!(r["trace"]["events"].as_u64().unwrap() > 1_000);
    let failure = &r["trace"]["write_failure"];
    assert!(failure["error"].as_str().unwrap().contains("No space left on device"), "{failure}");
    assert!(failure["unwritten_events"].as_u64().unwrap() > 0, "{failure}");
    let missing = r["lost"]["missing_after_ns"].as_u64().expect("the loss after the failure is stated");
    assert!(missing > 0 && missing <= r["trace"]["duration_ns"].as_u64().unwrap(), "{}", r["lost"]);
    let text = output(sched_trace().arg("report").arg(&out));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("was not recorded") && text.contains("could not be written"), "{text}");

    // Writing a dump to the full disk is an error too, not a quiet success.
    let dump = std::fs::File::create(mnt.join("dump.txt")).unwrap();
    let o = output(sched_trace().arg("dump").arg(&out).stdout(dump));
    assert_eq!(o.status.code(), Some(1), "dump to a full disk: {}", stderr(&o));
    assert!(stderr(&o).contains("No space left on device"), "{}", stderr(&o));
}

#[test]
fn a_tiny_ring_buffer_loses_events_and_says_so() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.trace");
    let storm = switch_storm(3_000_000);
    let o = output(
        sched_trace().args(["record", "--quiet", "--ring-buffer-size", "4096", "-d", "2s", "-o"]).arg(&out),
    );
    drop(storm);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("LOST"), "the summary says events were lost: {}", stderr(&o));
    let r = report_json(&out);
    let lost = r["lost"]["total"].as_u64().unwrap();
    assert!(lost > 0, "{}", r["lost"]);
    let by_kind: u64 = r["lost"]["by_kind"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_kind, lost);
    let text = output(sched_trace().arg("report").arg(&out));
    assert!(String::from_utf8_lossy(&text.stdout).contains("LOST:"), "the text report shows the loss");
}

#[test]
fn system_wide_sees_other_processes_but_not_itself() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("system.trace");
    let mut other =
        Command::new("sh").args(["-c", "for i in $(seq 100); do sleep 0.03; done"]).spawn().unwrap();
    let rec = spawn_record(&["-d", "1500ms"], &out);
    let recorder = rec.id();
    let (status, err) = finish(rec);
    other.wait().unwrap();
    assert!(status.success(), "{err}");
    let r = report_json(&out);
    let threads = r["threads"].as_array().unwrap();
    assert!(threads.iter().any(|t| t["pid"] == other.id()), "another process is in a system-wide trace");
    assert!(threads.iter().all(|t| t["pid"] != recorder), "the recorder leaves itself out");
}

#[test]
fn without_privileges_it_names_the_missing_capabilities_and_loads_nothing() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("unprivileged.trace");
    let marker = dir.path().join("ran");
    // As the nobody user, with no capabilities at all.
    let o = output(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_sched-trace"))
            .args(["record", "-o"])
            .arg(&out)
            .arg("--")
            .arg("touch")
            .arg(&marker),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("Run it as root"),
        "{err}"
    );
    assert!(!out.exists() && !marker.exists(), "nothing was written and the command did not run");
    assert_detached();
}

#[test]
fn an_unwritable_output_fails_before_anything_is_loaded() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let o =
        output(sched_trace().args(["record", "-o", "/proc/no-such-dir/x.trace", "--", "touch"]).arg(&marker));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/proc/no-such-dir/x.trace"), "{}", stderr(&o));
    assert!(!marker.exists(), "the command never ran untraced");
    assert_detached();
}
