//! `sched-trace-fuzz`: runs the harness's targets over mutated inputs, makes seeds from real
//! recordings, and replays saved inputs.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sched_trace_fuzz::{
    Campaign, Outcome, elf_notes, read_corpus, regressions, run_one, targets, trace_input,
};

#[derive(Parser)]
#[command(name = "sched-trace-fuzz", about = "sched-trace's structure-aware fuzz harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mutate the corpus's seeds and run every reader and analysis on each input.
    Run {
        /// Only this target (`trace`, `usdt`, `elf`); all of them by default.
        #[arg(long)]
        target: Option<String>,
        /// Inputs per target.
        #[arg(long, default_value_t = 10_000)]
        inputs: u64,
        /// At most this many seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The corpus: a directory per target (`trace/`, `elf/`).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
        corpus: PathBuf,
        /// More seeds for a target, as TARGET=FILE (a real recording, a real executable).
        #[arg(long = "extra-seed", value_name = "TARGET=FILE")]
        extra_seeds: Vec<String>,
        /// Where crashing and hanging inputs are written.
        #[arg(long, default_value = "fuzz-crashes")]
        crashes: PathBuf,
    },
    /// Make a small trace seed from a real recording (its first events, in small chunks).
    Trim {
        recording: PathBuf,
        output: PathBuf,
        #[arg(long, default_value_t = 3_000)]
        events: usize,
        #[arg(long, default_value_t = 500)]
        per_chunk: usize,
    },
    /// Write the regression inputs (inputs that once broke sched-trace, built from code) into
    /// DIR (the trace corpus).
    Regressions {
        #[arg(default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/trace"))]
        dir: PathBuf,
    },
    /// Run saved inputs through a target and say what each did.
    Replay {
        #[arg(long)]
        target: String,
        inputs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    match Cli::parse().command {
        Command::Run { target, inputs, seconds, seed, corpus, extra_seeds, crashes } => {
            let mut clean = true;
            for t in targets().iter().filter(|t| target.as_deref().is_none_or(|n| n == t.name())) {
                let dir = corpus.join(t.name());
                let mut seeds: Vec<Vec<u8>> = read_corpus(&dir)
                    .with_context(|| format!("reading the corpus {}", dir.display()))?
                    .into_iter()
                    .map(|(_, b)| b)
                    .collect();
                if t.name() == "usdt" {
                    seeds.extend(elf_notes::seeds());
                }
                if t.name() == "go" {
                    seeds.extend(sched_trace_fuzz::go_binary::seeds(&std::env::temp_dir()));
                }
                for extra in &extra_seeds {
                    if let Some((name, file)) = extra.split_once('=')
                        && name == t.name()
                    {
                        seeds.push(std::fs::read(file).with_context(|| format!("reading seed {file}"))?);
                    }
                }
                let findings = Campaign {
                    target: t.as_ref(),
                    seeds,
                    inputs,
                    time_limit: Duration::from_secs(seconds),
                    seed,
                    crash_dir: Some(crashes.clone()),
                    input_time_limit: Duration::from_secs(30),
                    memory_limit: 1 << 30,
                }
                .run();
                println!(
                    "{}: {} inputs ({} analysed, {} refused), {} crashes, slowest input {:.1} ms, peak memory {} MiB",
                    t.name(),
                    findings.inputs,
                    findings.analysed,
                    findings.refused,
                    findings.crashes.len(),
                    findings.slowest.as_secs_f64() * 1e3,
                    findings.peak_rss >> 20
                );
                for c in &findings.crashes {
                    let at = c.saved.as_ref().map_or(String::new(), |p| format!(" ({})", p.display()));
                    println!("  crash{at}: {}", c.message);
                }
                clean &= findings.crashes.is_empty();
            }
            Ok(clean)
        }
        Command::Trim { recording, output, events, per_chunk } => {
            let bytes =
                std::fs::read(&recording).with_context(|| format!("reading {}", recording.display()))?;
            let seed = trace_input::trim(&bytes, events, per_chunk)
                .with_context(|| format!("{} is not a readable trace", recording.display()))?;
            std::fs::write(&output, &seed).with_context(|| format!("writing {}", output.display()))?;
            println!("{}: {} bytes", output.display(), seed.len());
            Ok(true)
        }
        Command::Regressions { dir } => {
            for (name, bytes) in regressions::all() {
                let path = dir.join(name);
                std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                println!("{}: {} bytes", path.display(), bytes.len());
            }
            Ok(true)
        }
        Command::Replay { target, inputs } => {
            let all = targets();
            let t =
                all.iter().find(|t| t.name() == target).with_context(|| format!("no target `{target}`"))?;
            let mut clean = true;
            for path in &inputs {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                match run_one(t.as_ref(), &bytes) {
                    Ok(Outcome::Analysed) => println!("{}: analysed", path.display()),
                    Ok(Outcome::Refused(why)) => println!("{}: refused: {why}", path.display()),
                    Err(panic) => {
                        clean = false;
                        println!("{}: PANIC: {panic}", path.display());
                    }
                }
            }
            Ok(clean)
        }
    }
}
