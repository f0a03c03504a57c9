//! Builds the kernel programs (`ebpf-probes/kernel`) and hands their object to the crate.
//!
//! The probes need another target (`bpfel-unknown-none`), `-Z build-std=core` and a compiler whose
//! library source is installed: Debian's Rust (`/usr/bin/cargo`, `/usr/bin/rustc`) with
//! `rust-web-src`, plus `bpf-linker` built against Debian's LLVM. `cargo xtask setup` installs all
//! of that. The machine's default (rustup) toolchain builds everything else, so this script calls
//! the Debian cargo explicitly, with a clean environment and rustup off PATH: with rustup on PATH
//! the nested build would pick up a toolchain that has no library source.
//!
//! `SCHED_TRACE_PROBES_OBJ=/path/to/object` skips the nested build and embeds that object.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEFAULT_BPF_CARGO: &str = "/usr/bin/cargo";
const DEFAULT_BPF_RUSTC: &str = "/usr/bin/rustc";
const DEFAULT_TOOLS_DIR: &str = "/opt/sched-trace/tools";

fn main() {
    println!("cargo:rerun-if-env-changed=SCHED_TRACE_PROBES_OBJ");
    println!("cargo:rerun-if-env-changed=SCHED_TRACE_TOOLS");
    println!("cargo:rerun-if-env-changed=SCHED_TRACE_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=SCHED_TRACE_BPF_RUSTC");

    if let Ok(prebuilt) = env::var("SCHED_TRACE_PROBES_OBJ") {
        println!("cargo:rerun-if-changed={prebuilt}");
        println!("cargo:rustc-env=SCHED_TRACE_PROBES_OBJ={prebuilt}");
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let probes = manifest_dir.join("..").join("ebpf-probes");
    let kernel = probes.join("kernel");
    for input in [
        kernel.join("src"),
        kernel.join("Cargo.toml"),
        kernel.join("Cargo.lock"),
        kernel.join(".cargo").join("config.toml"),
        probes.join("abi").join("src"),
        probes.join("abi").join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    let cargo = env_path("SCHED_TRACE_BPF_CARGO", DEFAULT_BPF_CARGO);
    let rustc = env_path("SCHED_TRACE_BPF_RUSTC", DEFAULT_BPF_RUSTC);
    let tools = env_path("SCHED_TRACE_TOOLS", DEFAULT_TOOLS_DIR).join("bin");
    let missing: Vec<String> = [cargo.clone(), rustc.clone(), tools.join("bpf-linker")]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        fail(&format!(
            "the eBPF toolchain is not installed (missing: {}).\n\
             Run `cargo xtask setup` as root once: it installs Debian's Rust with its library \
             source, LLVM 22 and bpf-linker.",
            missing.join(", ")
        ));
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("bpf-target");
    let mut path = tools.into_os_string();
    path.push(":/usr/sbin:/usr/bin:/sbin:/bin");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&kernel) // cargo reads .cargo/config.toml from the working directory
        .args(["build", "--release", "--locked"])
        .env_clear()
        .env("PATH", path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir);
    for keep in ["HOME", "CARGO_HOME", "TMPDIR", "CARGO_NET_OFFLINE", "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("could not run {}: {e}", cargo.display())),
    };
    if !output.status.success() {
        fail(&format!(
            "building the kernel programs in {} failed ({}):\n{}{}",
            kernel.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let object = target_dir.join("bpfel-unknown-none").join("release").join("sched-trace-probes");
    if !object.exists() {
        fail(&format!("the kernel build succeeded but {} is missing", object.display()));
    }
    println!("cargo:rustc-env=SCHED_TRACE_PROBES_OBJ={}", object.display());
}

fn env_path(var: &str, default: &str) -> PathBuf {
    env::var_os(var).map(PathBuf::from).unwrap_or_else(|| Path::new(default).to_path_buf())
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
