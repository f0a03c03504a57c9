//! The `refrt` binary: its CLI, exit codes and output.

use std::process::Command;

use reference_runtime::workloads::NAMES;

fn refrt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_refrt"))
        .args(args)
        .env_remove("REFRUNTIME_GROUND_TRUTH")
        .env_remove("REFRUNTIME_PROCS")
        .output()
        .expect("run refrt")
}

#[test]
fn list_prints_the_workloads() {
    let out = refrt(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().collect::<Vec<_>>(), NAMES);
}

#[test]
fn a_run_prints_counters_and_a_final_json_line() {
    let log = std::env::temp_dir().join(format!("refrt-cli-{}.log", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_refrt"))
        .args(["pingpong", "--procs", "2", "--duration", "0.2", "--scale", "2"])
        .env("REFRUNTIME_GROUND_TRUTH", &log)
        .output()
        .expect("run refrt");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with("runtime: 2 Ps"), "{text}");
    let last = text.lines().last().expect("output");
    assert!(last.starts_with(r#"{"workload":"pingpong","ops":"#), "{last}");
    let ops: u64 = last
        .split(r#""ops":"#)
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("ops");
    assert!(ops > 0);
    for key in [r#""seconds":"#, r#""ops_per_sec":"#, r#""procs":2}"#] {
        assert!(last.contains(key), "{last}");
    }
    let logged = std::fs::read_to_string(&log).expect("the ground-truth log");
    let _ = std::fs::remove_file(&log);
    assert!(logged.lines().filter(|l| l.contains(" task_run ")).count() as u64 >= ops);
}

#[test]
fn bad_usage_fails() {
    assert_eq!(refrt(&[]).status.code(), Some(2));
    assert_eq!(refrt(&["pingpong", "--procs", "0"]).status.code(), Some(2));
    assert_eq!(refrt(&["pingpong", "--bogus", "1"]).status.code(), Some(2));
    assert_eq!(refrt(&["pingpong", "--duration"]).status.code(), Some(2));
    let unknown = refrt(&["nosuch", "--duration", "0.1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown workload"));
}

#[test]
fn an_unwritable_log_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_refrt"))
        .args(["pingpong", "--duration", "0.1"])
        .env("REFRUNTIME_GROUND_TRUTH", "/nonexistent-dir/refrt.log")
        .output()
        .expect("run refrt");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ground-truth log"));
}

#[test]
fn bad_procs_env_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_refrt"))
        .args(["pingpong", "--duration", "0.1"])
        .env("REFRUNTIME_PROCS", "lots")
        .env_remove("REFRUNTIME_GROUND_TRUTH")
        .output()
        .expect("run refrt");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REFRUNTIME_PROCS"));
    let ok = Command::new(env!("CARGO_BIN_EXE_refrt"))
        .args(["pingpong", "--duration", "0.1"])
        .env("REFRUNTIME_PROCS", "3")
        .env_remove("REFRUNTIME_GROUND_TRUTH")
        .output()
        .expect("run refrt");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains(r#""procs":3}"#));
}
