//! The Go binary target: Go executables whose build info, function table (`.gopclntab`),
//! DWARF and runtime code are mutated in place, and read as the recorder reads every Go program
//! it traces (`sched_trace_binaries::go::GoBinary`): version, layout, the slot of `g`, the probe
//! sites and the go-statement wrappers. A wrong answer from a lying file is fine; a panic, a hang
//! or an allocation the file merely claims is not.
//!
//! The seeds are the Go test program (`sched-trace-cli/tests/go-target`) built by the Go
//! toolchains `cargo xtask setup` installs, stripped and not (see [`seeds`]): a few megabytes
//! each, so they are built rather than kept in the corpus.

use std::path::{Path, PathBuf};

use sched_trace_binaries::go::GoBinary;

use crate::{Outcome, Rng, Target, elf_symbols::section_range};

pub struct GoExecutable;

/// The sections the Go reader parses.
const SECTIONS: [&str; 6] =
    [".go.buildinfo", ".gopclntab", ".debug_info", ".debug_abbrev", ".text", ".debug_str"];

impl Target for GoExecutable {
    fn name(&self) -> &'static str {
        "go"
    }

    fn mutate(&self, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut out = seed.to_vec();
        if out.is_empty() {
            return out;
        }
        let name = SECTIONS[rng.below(SECTIONS.len())];
        let (start, len) = section_range(seed, name).unwrap_or((0, out.len().min(4096)));
        if len == 0 || start >= out.len() {
            return out;
        }
        let len = len.min(out.len() - start);
        // Headers and tables are at the start of their sections: bias towards it.
        let span = if rng.one_in(2) { len.min(256) } else { len };
        for _ in 0..1 + rng.below(8) {
            let at = start + rng.below(span);
            match rng.below(4) {
                0 => out[at] ^= 1 << rng.below(8),
                1 => out[at] = 0xff,
                2 => out[at] = 0,
                _ => {
                    let word = [0u32, 1, u32::MAX, out.len() as u32, rng.next_u64() as u32];
                    let value = word[rng.below(word.len())].to_le_bytes();
                    let end = (at + 4).min(out.len());
                    out[at..end].copy_from_slice(&value[..end - at]);
                }
            }
        }
        out
    }

    fn run(&self, input: &[u8]) -> Outcome {
        match GoBinary::parse("input", input) {
            Ok(Some(b)) => {
                // Every question the recorder asks of a parsed binary.
                for f in b.functions.iter().step_by(97) {
                    let _ = b.start_function(f.entry + 1);
                }
                let _ = b.function("runtime.main");
                let _ = b.setting("GOARCH");
                Outcome::Analysed
            }
            Ok(None) => Outcome::Refused("not a Go program".into()),
            Err(e) => Outcome::Refused(e.to_string()),
        }
    }
}

/// The newest Go toolchain `cargo xtask setup` installed, if any.
fn newest_go() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/opt/sched-trace/go")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let key =
                e.file_name().to_string_lossy().split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let go = e.path().join("bin/go");
            go.exists().then_some((key, go))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, go)| go)
}

/// The seeds: the Go test program built into `dir` with the newest installed Go, with and
/// without DWARF and symbols. Empty when no Go toolchain is installed.
pub fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let Some(go) = newest_go() else { return Vec::new() };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sched-trace-cli/tests/go-target");
    let mut out = Vec::new();
    for (name, flags) in [("plain", ""), ("stripped", "-s -w")] {
        let exe = dir.join(format!("go-seed-{name}"));
        let built = std::process::Command::new(&go)
            .arg("build")
            .arg(format!("-ldflags={flags}"))
            .arg("-o")
            .arg(&exe)
            .arg(".")
            .current_dir(&source)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", dir.join("go-cache"))
            .status()
            .is_ok_and(|s| s.success());
        if let Some(bytes) = built.then(|| std::fs::read(&exe).ok()).flatten() {
            out.push(bytes);
        }
    }
    out
}
