//! Pauses of a whole runtime: Go's stop-the-world stretches (garbage collection's sweep and mark
//! termination, `ReadMemStats`, …), from the full level's `go:stw_stop` / `go:stw_start`
//! probes. A pause is a fact about a process, not about one task: every goroutine of it is held
//! back while it lasts.

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::samples::Window;
use crate::trace::UserProbe;

/// One stop-the-world stretch of process `pid`, by its reason's name (`stwGCMarkTerm`), and
/// the goroutines of it that were running or runnable when it began (held back by it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuntimePause {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub reason: String,
    pub held_back: Vec<u64>,
}

/// Pairs each process's stops with the starts that follow them.
#[derive(Default)]
pub struct PauseTracker {
    open: FxHashMap<u32, (u64, String, Vec<u64>)>,
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

    /// Takes a hit of user-level probe `probe` of process `pid` at `ts` (its table entry names
    /// the values of a stop's first argument); `active`: the tasks of `pid` running or runnable
    /// now.
    pub fn probe(&mut self, probe: &UserProbe, args: &[u64], ts: u64, pid: u32, active: Vec<u64>) {
        if probe.provider != "go" {
            return;
        }
        match probe.name.as_str() {
            "stw_stop" => {
                let value = args.first().copied().unwrap_or(0);
                let reason =
                    probe.reasons.get(&value).cloned().unwrap_or_else(|| format!("stwReason({value})"));
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
        let probe = |provider: &str, name: &str| UserProbe {
            index: 0,
            binary: String::new(),
            provider: provider.into(),
            name: name.into(),
            file_offset: 0,
            args: String::new(),
            reasons: names.clone(),
        };
        let (stop, start) = (probe("go", "stw_stop"), probe("go", "stw_start"));
        let mut p = PauseTracker::default();
        p.probe(&stop, &[2], 100, 7, vec![1, 5, 9]);
        p.probe(&stop, &[9], 110, 8, vec![1]);
        p.probe(&start, &[], 150, 7, vec![]);
        p.probe(&start, &[], 160, 7, vec![]); // no stop open: nothing
        p.probe(&probe("refrt", "stw_stop"), &[2], 170, 7, vec![]); // another runtime's probe
        let done = p.finish();
        let want = RuntimePause {
            pid: 7,
            start: 100,
            end: 150,
            reason: "stwGCMarkTerm".into(),
            held_back: vec![1, 5, 9],
        };
        assert_eq!(done, vec![want]);
        assert!(PauseTracker::wants("go", "stw_stop") && !PauseTracker::wants("go", "gopark"));
    }
}
