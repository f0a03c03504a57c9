//! sched-trace's own fuzz harness.
//!
//! Every reader of outside input gets a [`Target`]: a way to turn a seed (a real input) into a
//! mutated one that is still *structurally valid* — lengths, checksums, compression and layout
//! redone after the mutation, so that the contents reach the decoders and the analyses instead of
//! stopping at the checksum — and a way to run that input through everything that reads it. A
//! [`Campaign`] runs a target over many inputs in-process and reports every panic, every input
//! slower than the limit and any growth of memory beyond the limit.
//!
//! Why a harness of our own rather than cargo-fuzz: the inputs worth trying are whole trace
//! files whose every chunk is re-framed after the mutation; a byte-level fuzzer needs a custom
//! mutator for that anyway, and this one runs on the stable toolchain inside the normal test
//! command (CI has no nightly, no sanitizer runtime), seeded and repeatable.

pub mod elf_notes;
pub mod elf_symbols;
pub mod go_binary;
pub mod regressions;
pub mod rng;
pub mod trace_input;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use rng::Rng;

/// What an input did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read and analysed to the end.
    Analysed,
    /// Refused with this error (a clear refusal is a correct outcome for a bad input).
    Refused(String),
}

/// A reader of outside input, and how to make inputs for it.
pub trait Target: Sync {
    fn name(&self) -> &'static str;
    /// A new input made from `seed`.
    fn mutate(&self, seed: &[u8], rng: &mut Rng) -> Vec<u8>;
    /// Runs every reader and analysis that takes this kind of input.
    fn run(&self, input: &[u8]) -> Outcome;
}

/// Every target of the harness, by name.
pub fn targets() -> Vec<Box<dyn Target>> {
    vec![
        Box::new(trace_input::TraceFile),
        Box::new(elf_notes::UsdtNotes),
        Box::new(elf_symbols::ElfSymbols),
        Box::new(go_binary::GoExecutable),
    ]
}

/// An input that made a reader or an analysis panic.
#[derive(Clone, Debug)]
pub struct Crash {
    pub message: String,
    pub input: Vec<u8>,
    /// Where it was saved, when a directory was given.
    pub saved: Option<PathBuf>,
}

/// What a campaign found.
#[derive(Debug, Default)]
pub struct Findings {
    pub inputs: u64,
    pub analysed: u64,
    pub refused: u64,
    pub crashes: Vec<Crash>,
    pub slowest: Duration,
    /// Peak resident memory of this process, in bytes.
    pub peak_rss: u64,
}

/// A bounded run of one target.
pub struct Campaign<'a> {
    pub target: &'a dyn Target,
    pub seeds: Vec<Vec<u8>>,
    /// Stop after this many inputs...
    pub inputs: u64,
    /// ...or after this long, whichever comes first.
    pub time_limit: Duration,
    pub seed: u64,
    /// Crashing inputs are written here.
    pub crash_dir: Option<PathBuf>,
    /// One input taking longer than this is a hang: the input is saved and the process aborts.
    pub input_time_limit: Duration,
    /// The process growing past this many resident bytes is a bug too (same treatment).
    pub memory_limit: u64,
}

impl Campaign<'_> {
    pub fn run(&self) -> Findings {
        let mut findings = Findings::default();
        if self.seeds.is_empty() {
            return findings;
        }
        let watch = Watchdog::start(
            self.input_time_limit,
            self.memory_limit,
            self.crash_dir.clone(),
            self.target.name(),
        );
        let quiet =
            QuietPanics::install_saving(watch.state.clone(), self.crash_dir.clone(), self.target.name());
        let mut rng = Rng::new(self.seed);
        let started = Instant::now();
        while findings.inputs < self.inputs && started.elapsed() < self.time_limit {
            let seed = &self.seeds[rng.below(self.seeds.len())];
            let mut input = self.target.mutate(seed, &mut rng);
            // Stack a few mutations now and then: some bugs need two things wrong at once.
            for _ in 0..rng.below(3) {
                input = self.target.mutate(&input, &mut rng);
            }
            findings.inputs += 1;
            watch.begin(&input);
            let t0 = Instant::now();
            let result = caught(|| self.target.run(&input));
            findings.slowest = findings.slowest.max(t0.elapsed());
            watch.end();
            match result {
                Ok(Outcome::Analysed) => findings.analysed += 1,
                Ok(Outcome::Refused(_)) => findings.refused += 1,
                Err(_) => {
                    let message = quiet.take();
                    let saved =
                        self.crash_dir.as_deref().and_then(|d| save(d, self.target.name(), "crash", &input));
                    findings.crashes.push(Crash { message, input, saved });
                }
            }
        }
        drop(quiet);
        findings.peak_rss = peak_rss();
        findings
    }
}

/// Runs one input as the campaign does and returns the panic message if it panicked.
pub fn run_one(target: &dyn Target, input: &[u8]) -> Result<Outcome, String> {
    let quiet = QuietPanics::install(None);
    let result = caught(|| target.run(input));
    result.map_err(|_| quiet.take())
}

/// Reads every file of `dir` (sorted by name), as seeds or regression inputs. A target with no
/// directory has no files (git keeps no empty directory; the USDT target's seeds are made in
/// code and from real executables).
pub fn read_corpus(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries?,
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files.into_iter().map(|p| std::fs::read(&p).map(|b| (p, b))).collect()
}

fn save(dir: &Path, target: &str, what: &str, input: &[u8]) -> Option<PathBuf> {
    let _ = std::fs::create_dir_all(dir);
    let hash =
        input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    let path = dir.join(format!("{target}-{what}-{hash:016x}"));
    std::fs::write(&path, input).ok().map(|()| path)
}

/// Peak resident set size of this process (bytes).
pub fn peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_maxrss as u64 * 1024
}

/// Resident set size right now (bytes).
fn current_rss() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page)
}

/// Watches the input being run from another thread: one that takes too long or makes the
/// process too big is saved and the process stops, saying why (an in-process run cannot
/// interrupt an analysis that loops).
struct Watchdog {
    /// The input being run, when it began (ms after `epoch`), and whether one is running.
    state: Arc<(Mutex<Vec<u8>>, AtomicU64, AtomicBool)>,
    epoch: Instant,
}

impl Watchdog {
    fn start(limit: Duration, memory_limit: u64, dir: Option<PathBuf>, target: &'static str) -> Watchdog {
        let state = Arc::new((Mutex::new(Vec::new()), AtomicU64::new(0), AtomicBool::new(false)));
        let shared = state.clone();
        let epoch = Instant::now();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if Arc::strong_count(&shared) == 1 {
                    return; // the campaign is over
                }
                let (input, since, busy) = &*shared;
                if !busy.load(Ordering::Acquire) {
                    continue;
                }
                let running =
                    epoch.elapsed().saturating_sub(Duration::from_millis(since.load(Ordering::Acquire)));
                let rss = current_rss();
                let why = if running > limit {
                    format!("one input has run for {running:?} (limit {limit:?})")
                } else if rss > memory_limit {
                    format!("the process holds {} MiB (limit {} MiB)", rss >> 20, memory_limit >> 20)
                } else {
                    continue;
                };
                let input = input.lock().map(|i| i.clone()).unwrap_or_default();
                let saved = dir.as_deref().and_then(|d| save(d, target, "hang", &input));
                eprintln!(
                    "sched-trace-fuzz: {target}: {why}; the input is {}",
                    saved.map_or("not saved (no crash directory)".into(), |p| format!(
                        "saved as {}",
                        p.display()
                    ))
                );
                std::process::abort();
            }
        });
        Watchdog { state, epoch }
    }

    fn begin(&self, input: &[u8]) {
        let (current, since, busy) = &*self.state;
        if let Ok(mut c) = current.lock() {
            c.clear();
            c.extend_from_slice(input);
        }
        since.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        busy.store(true, Ordering::Release);
    }

    fn end(&self) {
        self.state.2.store(false, Ordering::Release);
    }
}

thread_local! {
    /// Whether this thread is running an input (a panic then is a finding, not a harness bug).
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as an input's run: its panics are caught and kept quiet.
fn caught<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    IN_RUN.with(|r| r.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_RUN.with(|r| r.set(false));
    result
}

/// Panics while fuzzing are findings, not noise: their messages are kept, not printed (a panic
/// of the harness itself, outside an input's run, is printed).
struct QuietPanics {
    message: Arc<Mutex<String>>,
}

/// The input being run, for a panic that cannot unwind (the process aborts right after).
type Saving = (Arc<(Mutex<Vec<u8>>, AtomicU64, AtomicBool)>, Option<PathBuf>, &'static str);

impl QuietPanics {
    fn install_saving(
        input: Arc<(Mutex<Vec<u8>>, AtomicU64, AtomicBool)>,
        dir: Option<PathBuf>,
        target: &'static str,
    ) -> QuietPanics {
        Self::install(Some((input, dir, target)))
    }

    fn install(saving: Option<Saving>) -> QuietPanics {
        let message = Arc::new(Mutex::new(String::new()));
        let keep = message.clone();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !IN_RUN.with(|r| r.get()) {
                eprintln!("sched-trace-fuzz: the harness panicked: {text}{at}");
            } else if text.starts_with("unsafe precondition")
                || std::env::var_os("SCHED_TRACE_FUZZ_VERBOSE").is_some()
            {
                // Undefined behaviour caught by a standard-library check: this panic cannot
                // unwind, the process aborts right after the hook.
                let saved = saving.as_ref().and_then(|(input, dir, target)| {
                    let bytes = input.0.lock().map(|i| i.clone()).unwrap_or_default();
                    dir.as_deref().and_then(|d| save(d, target, "abort", &bytes))
                });
                eprintln!("sched-trace-fuzz: a panic that cannot unwind: {text}{at}; the input: {saved:?}");
                eprintln!("{}", std::backtrace::Backtrace::force_capture());
            }
            if let Ok(mut m) = keep.lock() {
                *m = format!("{text}{at}");
            }
        }));
        QuietPanics { message }
    }

    fn take(&self) -> String {
        self.message.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::panic::take_hook();
        }
    }
}
