//! Pauses of a whole runtime: Go's stop-the-world stretches (garbage collection's sweep and mark
//! termination, `ReadMemStats`, …), from the full level's `go:stw_stop` / `go:stw_start`
//! probes. A pause is a fact about a process, not about one task: every goroutine of it is held
//! back while it lasts.

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::samples::Window;

/// One stop-the-world stretch of process `pid`, by its reason's name (`stwGCMarkTerm`), and
/// how many of its goroutines were running or runnable when it began (held back by it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuntimePause {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub reason: String,
    pub held_back: u64,
}

/// Pairs each process's stops with the starts that follow them.
#[derive(Default)]
pub struct PauseTracker {
    open: FxHashMap<u32, (u64, String, u64)>,
    done: Vec<RuntimePause>,
    window: Window,
}

impl PauseTracker {
    pub fn with_window(window: Window) -> Self {
        PauseTracker { window, ..Default::default() }
    }

    /// Whether a probe is one this tracker takes (so that the caller counts held-back tasks
    /// only for those).
    pub fn wants(provider: &str, name: &str) -> bool {
        provider == "go" && matches!(name, "stw_stop" | "stw_start")
    }

    /// Takes a user-level probe hit of process `pid` at `ts`: `reasons` names the values of a
    /// stop's first argument; `active`: the tasks of `pid` running or runnable now.
    #[allow(clippy::too_many_arguments)]
    pub fn probe(
        &mut self,
        provider: &str,
        name: &str,
        reasons: &std::collections::BTreeMap<u64, String>,
        args: &[u64],
        ts: u64,
        pid: u32,
        active: u64,
    ) {
        if provider != "go" {
            return;
        }
        match name {
            "stw_stop" => {
                let value = args.first().copied().unwrap_or(0);
                let reason = reasons.get(&value).cloned().unwrap_or_else(|| format!("stwReason({value})"));
                self.open.insert(pid, (ts, reason, active));
            }
            "stw_start" => {
                if let Some((start, reason, held_back)) = self.open.remove(&pid)
                    && self.window.contains(ts)
                {
                    self.done.push(RuntimePause { pid, start, end: ts, reason, held_back });
                }
            }
            _ => {}
        }
    }

    /// The pauses that ended, in order (a stop without its start at the end is left out).
    pub fn finish(self) -> Vec<RuntimePause> {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_pair_with_the_next_start_of_the_same_process() {
        let names: std::collections::BTreeMap<u64, String> = [(2, "stwGCMarkTerm".to_string())].into();
        let mut p = PauseTracker::default();
        p.probe("go", "stw_stop", &names, &[2], 100, 7, 3);
        p.probe("go", "stw_stop", &names, &[9], 110, 8, 1);
        p.probe("go", "stw_start", &names, &[], 150, 7, 0);
        p.probe("go", "stw_start", &names, &[], 160, 7, 0); // no stop open: nothing
        p.probe("refrt", "stw_stop", &names, &[2], 170, 7, 0); // another runtime's probe
        let done = p.finish();
        let want =
            RuntimePause { pid: 7, start: 100, end: 150, reason: "stwGCMarkTerm".into(), held_back: 3 };
        assert_eq!(done, vec![want]);
        assert!(PauseTracker::wants("go", "stw_stop") && !PauseTracker::wants("go", "gopark"));
    }
}
