//! `refrt WORKLOAD [--procs N] [--scale S] [--duration SECS]`: runs one workload on the
//! reference runtime, prints the runtime's counters and a final JSON line. `refrt list` prints
//! the workloads.

use std::process::ExitCode;
use std::time::Duration;

use reference_runtime::workloads::{self, NAMES, Options};

const USAGE: &str = "usage: refrt WORKLOAD [--procs N] [--scale S] [--duration SECS]
       refrt list

Runs WORKLOAD on the reference runtime, prints the runtime's counters and a final JSON line.
Set REFRUNTIME_GROUND_TRUTH=FILE to record every probe event in FILE;
REFRUNTIME_PROCS=N sets the default number of Ps.";

enum Command {
    List,
    Help,
    Run(String, Options),
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let Some(first) = it.next() else { return Err("no workload given".into()) };
    match first.as_str() {
        "list" => return Ok(Command::List),
        "-h" | "--help" | "help" => return Ok(Command::Help),
        _ => {}
    }
    let mut opts = Options::default();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let value = match inline.or_else(|| it.next().cloned()) {
            Some(v) => v,
            None => return Err(format!("{flag} needs a value")),
        };
        match flag {
            "--procs" => opts.procs = Some(positive(flag, &value)?),
            "--scale" => {
                opts.scale =
                    u32::try_from(positive(flag, &value)?).map_err(|_| format!("{flag} is too large"))?
            }
            "--duration" => {
                let secs: f64 =
                    value.parse().map_err(|_| format!("{flag}: {value:?} is not a number of seconds"))?;
                opts.duration = Duration::try_from_secs_f64(secs)
                    .map_err(|_| format!("{flag}: {value:?} is not a duration"))?;
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Command::Run(first.clone(), opts))
}

fn positive(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: {value:?} is not a positive integer")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Command::List) => {
            for name in NAMES {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            println!("{USAGE}\n\nworkloads: {}", NAMES.join(", "));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(name, opts)) => match workloads::run(&name, &opts) {
            Ok(outcome) => {
                print!("{}", outcome.stats);
                println!("{}", outcome.json_line());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("refrt: {e}");
                ExitCode::FAILURE
            }
        },
        Err(msg) => {
            eprintln!("refrt: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
