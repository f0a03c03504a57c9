//! The runtime handle: configuration, `block_on`, shutdown.

use std::fmt;
use std::future::Future;
use std::io;
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::probes::{self, GroundTruth};
use crate::sched::{Ids, Shared};
use crate::stats::Stats;
use crate::task;

/// Environment variable overriding the default number of Ps.
pub const PROCS_ENV: &str = "REFRUNTIME_PROCS";
/// Environment variable naming the ground-truth log file.
pub const GROUND_TRUTH_ENV: &str = "REFRUNTIME_GROUND_TRUTH";

/// Ms beyond the Ps, for blocking sections, unless configured.
const DEFAULT_EXTRA_THREADS: usize = 128;

/// What can fail when building or running a runtime.
#[derive(Debug)]
pub enum Error {
    /// `REFRUNTIME_PROCS` is not a positive integer.
    Procs { value: String },
    /// The ground-truth log cannot be created or written.
    GroundTruth { path: PathBuf, source: io::Error },
    /// epoll or eventfd could not be created.
    Netpoll(io::Error),
    /// No worker thread could be started.
    Thread(io::Error),
    /// A worker thread panicked (a bug in the runtime).
    Worker(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Procs { value } => write!(f, "{PROCS_ENV}={value:?} is not a positive number of Ps"),
            Error::GroundTruth { path, source } => {
                write!(f, "ground-truth log {}: {source}", path.display())
            }
            Error::Netpoll(e) => write!(f, "cannot create the netpoller: {e}"),
            Error::Thread(e) => write!(f, "cannot start a worker thread: {e}"),
            Error::Worker(msg) => write!(f, "a worker thread panicked: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::GroundTruth { source, .. } => Some(source),
            Error::Netpoll(e) | Error::Thread(e) => Some(e),
            Error::Procs { .. } | Error::Worker(_) => None,
        }
    }
}

/// The number of Ps a runtime gets by default: `REFRUNTIME_PROCS` if set, else the CPUs the
/// process may use ([`crate::available_procs`]).
pub fn default_procs() -> Result<usize, Error> {
    match std::env::var(PROCS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Procs { value: v }),
        },
        Err(std::env::VarError::NotPresent) => Ok(crate::available_procs()),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(Error::Procs { value: v.to_string_lossy().into_owned() })
        }
    }
}

#[derive(Debug, Clone)]
enum LogSetting {
    FromEnv,
    Path(PathBuf),
    Off,
}

/// Configures a [`Runtime`].
#[derive(Debug, Clone)]
pub struct Builder {
    procs: Option<usize>,
    max_threads: Option<usize>,
    log: LogSetting,
}

impl Builder {
    /// The number of Ps (at least 1). Overrides `REFRUNTIME_PROCS` and the CPU count.
    pub fn procs(mut self, n: usize) -> Self {
        self.procs = Some(n.max(1));
        self
    }

    /// The most worker threads (Ms) the runtime starts, at least the number of Ps (default: Ps
    /// + 128). Ms beyond the Ps exist for blocking sections.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = Some(n);
        self
    }

    /// Writes the ground-truth log to `path` (overrides `REFRUNTIME_GROUND_TRUTH`).
    pub fn ground_truth(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = LogSetting::Path(path.into());
        self
    }

    /// No ground-truth log, whatever the environment says.
    pub fn no_ground_truth(mut self) -> Self {
        self.log = LogSetting::Off;
        self
    }

    /// Creates the runtime (and truncates its ground-truth log). Its threads start with each
    /// `block_on`.
    pub fn build(self) -> Result<Runtime, Error> {
        let procs = match self.procs {
            Some(n) => n,
            None => default_procs()?,
        };
        let path = match self.log {
            LogSetting::Path(p) => Some(p),
            LogSetting::Off => None,
            LogSetting::FromEnv => {
                std::env::var_os(GROUND_TRUTH_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
            }
        };
        let log = match path {
            Some(path) => Some(Arc::new(
                GroundTruth::create(&path)
                    .map_err(|source| Error::GroundTruth { path: path.clone(), source })?,
            )),
            None => None,
        };
        let max_threads = self.max_threads.unwrap_or(procs + DEFAULT_EXTRA_THREADS).max(procs);
        Ok(Runtime { procs, max_threads, log, ids: Arc::new(Ids::new()) })
    }
}

/// A G/M/P runtime. Each [`Runtime::block_on`] is a session: it starts the Ms, runs the future
/// as the root task, and when that completes stops and joins every M, drops the tasks left, and
/// flushes the ground-truth log. A runtime can run any number of sessions, one after another
/// or at once; task and M ids keep counting across them, so one log never reuses an id.
pub struct Runtime {
    procs: usize,
    max_threads: usize,
    log: Option<Arc<GroundTruth>>,
    ids: Arc<Ids>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("procs", &self.procs)
            .field("max_threads", &self.max_threads)
            .field("ground_truth", &self.ground_truth_path())
            .finish()
    }
}

impl Runtime {
    pub fn builder() -> Builder {
        Builder { procs: None, max_threads: None, log: LogSetting::FromEnv }
    }

    /// A runtime with the defaults (Ps from the environment or the CPUs, log from the environment).
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    pub fn procs(&self) -> usize {
        self.procs
    }

    pub fn ground_truth_path(&self) -> Option<&Path> {
        self.log.as_deref().map(GroundTruth::path)
    }

    /// Runs `future` as the root task and returns its output.
    ///
    /// # Panics
    /// If the future panics (after the runtime has shut down), or if the session cannot start
    /// or finish cleanly (see [`Runtime::run`] for those errors as values).
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.run(future) {
            Ok((output, _)) => output,
            Err(e) => panic!("reference-runtime: {e}"),
        }
    }

    /// Runs `future` as the root task; returns its output and the session's counters.
    ///
    /// # Panics
    /// If the future panics (after the runtime has shut down and the log is flushed), or when
    /// called from inside a runtime task (it would block that task's M).
    pub fn run<F>(&self, future: F) -> Result<(F::Output, Stats), Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        assert!(
            crate::sched::current().is_none(),
            "Runtime::block_on called from inside a reference-runtime task"
        );
        let shared = Shared::new(self.procs, self.max_threads, self.log.clone(), self.ids.clone())
            .map_err(Error::Netpoll)?;
        if let Some(log) = &self.log {
            probes::attach_thread(log);
        }
        let started = shared.start(future);
        let output = match started {
            Ok(mut handle) => Ok(task::park_on(|cx| handle.poll_result(cx))),
            Err(e) => Err(Error::Thread(e)),
        };
        let worker_panics = shared.shutdown();
        let stats = shared.stats();
        drop(shared);
        let flushed = match &self.log {
            Some(log) => {
                probes::detach_thread();
                log.finish().map_err(|source| Error::GroundTruth { path: log.path().to_path_buf(), source })
            }
            None => Ok(()),
        };
        let output = output?;
        if let Some(msg) = worker_panics.into_iter().next() {
            return Err(Error::Worker(msg));
        }
        flushed?;
        match output {
            Ok(v) => Ok((v, stats)),
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}
