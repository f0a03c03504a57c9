//! The fuzz harness as part of the test command: every corpus input (the seeds, made from real
//! recordings and executables, and every input that ever broke something) goes through every
//! reader and analysis, then a bounded random run of mutations of them. A panic fails the test.
//! `SCHED_TRACE_FUZZ_INPUTS` sets the number of mutated inputs per target (the long runs are
//! `cargo xtask fuzz`).

use std::{path::Path, time::Duration};

use sched_trace_fuzz::{Campaign, Outcome, elf_notes, go_binary, read_corpus, regressions, run_one, targets};

fn corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    read_corpus(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
}

#[test]
fn every_corpus_input_runs_without_a_panic() {
    for t in targets() {
        let inputs = corpus(t.name());
        // The USDT and Go targets' seeds are built (see their `seeds`), not kept.
        let built = matches!(t.name(), "usdt" | "go");
        assert!(inputs.len() >= 2 || built, "{}: the corpus is nearly empty", t.name());
        for (path, bytes) in inputs {
            if let Err(panic) = run_one(t.as_ref(), &bytes) {
                panic!("{}: {} panics: {panic}", t.name(), path.display());
            }
        }
    }
}

#[test]
fn the_regression_inputs_are_in_the_corpus_and_handled() {
    let kept = corpus("trace");
    for (name, bytes) in regressions::all() {
        let file = kept.iter().find(|(p, _)| p.file_name().is_some_and(|n| n == name));
        let (_, on_disk) =
            file.unwrap_or_else(|| panic!("{name} is not in corpus/trace (sched-trace-fuzz regressions)"));
        assert_eq!(on_disk, &bytes, "{name} in the corpus differs from the one built from code");
        let trace = targets().into_iter().find(|t| t.name() == "trace").unwrap();
        match run_one(trace.as_ref(), &bytes) {
            Ok(Outcome::Analysed) => {}
            // The 96 GiB drop-counter claim is refused, naming where.
            Ok(Outcome::Refused(why)) => assert!(why.contains("drop counters claim"), "{name}: {why}"),
            Err(panic) => panic!("{name}: {panic}"),
        }
    }
}

#[test]
fn mutated_inputs_run_without_a_panic() {
    let inputs: u64 =
        std::env::var("SCHED_TRACE_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_500);
    // A different seed every run (printed, to repeat a failure), unless one is given.
    let seed =
        std::env::var("SCHED_TRACE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let crashes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    for t in targets() {
        let mut seeds: Vec<Vec<u8>> = corpus(t.name()).into_iter().map(|(_, b)| b).collect();
        if t.name() == "usdt" {
            seeds.extend(elf_notes::seeds());
        }
        if t.name() == "go" {
            seeds.extend(go_binary::seeds(Path::new(env!("CARGO_TARGET_TMPDIR"))));
            if seeds.is_empty() {
                assert!(std::env::var_os("CI").is_none(), "no Go toolchain to build the go target's seeds");
                eprintln!("go: skipped: no Go toolchain (cargo xtask setup)");
                continue;
            }
        }
        let f = Campaign {
            target: t.as_ref(),
            seeds,
            inputs,
            time_limit: Duration::from_secs(120),
            seed,
            crash_dir: Some(crashes.clone()),
            input_time_limit: Duration::from_secs(30),
            memory_limit: 1 << 30,
        }
        .run();
        eprintln!(
            "{}: seed {seed}: {} inputs, {} analysed, {} refused, slowest {:?}, peak memory {} MiB",
            t.name(),
            f.inputs,
            f.analysed,
            f.refused,
            f.slowest,
            f.peak_rss >> 20
        );
        let crashes: Vec<String> = f
            .crashes
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c.message,
                    c.saved.as_ref().map_or("not saved".into(), |p| p.display().to_string())
                )
            })
            .collect();
        assert!(
            crashes.is_empty(),
            "{} with seed {seed}: {} crashes:\n{}",
            t.name(),
            crashes.len(),
            crashes.join("\n")
        );
        assert!(
            f.analysed * 4 >= f.inputs,
            "{}: most mutated inputs must reach the analyses ({} of {})",
            t.name(),
            f.analysed,
            f.inputs
        );
    }
}
