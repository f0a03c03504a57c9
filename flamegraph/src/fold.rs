//! Weighted stacks to folded lines: `root;frame;…;leaf weight`, the format FlameGraph and
//! inferno read.
//!
//! Stacks come as ids into a stack table, with the frames of the caller's own first (a process,
//! a thread, a user task: what the flame graph is grouped by) and an optional reason frame last
//! (`[runq]`, `[sleep]`, …). The folder adds up weights per distinct stack before anything is
//! symbolized, so a million samples of a few thousand stacks are a few thousand symbolizations.

use rustc_hash::FxHashMap;

use crate::symbolize::Symbolizer;

/// One weighted stack: whose (`pid`, at `ts`: which mappings name it), the user and kernel stack
/// ids (`None`: no such stack), the frames before it (`prefix`, root first) and after it
/// (`leaf`, e.g. why the thread was off CPU).
#[derive(Clone, Copy, Debug)]
pub struct Stack<'a> {
    pub pid: u32,
    pub ts: u64,
    pub user: Option<u32>,
    pub kernel: Option<u32>,
    pub prefix: &'a [String],
    pub leaf: Option<&'a str>,
    /// Another stack drawn on top, after a `--` frame, leaf first (a waker's: process, user and
    /// kernel stack ids).
    pub above: Option<(u32, Option<u32>, Option<u32>)>,
    pub weight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    pid: u32,
    user: Option<u32>,
    kernel: Option<u32>,
    prefix: u32,
    leaf: u32,
    above: Option<(u32, Option<u32>, Option<u32>)>,
}

/// Adds up weighted stacks.
#[derive(Default)]
pub struct Folder {
    weights: FxHashMap<Key, (u64, u64)>,
    /// Interned prefixes and leaves.
    prefixes: Vec<Vec<String>>,
    prefix_ids: FxHashMap<Vec<String>, u32>,
    leaves: Vec<Option<String>>,
    leaf_ids: FxHashMap<Option<String>, u32>,
}

impl Folder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, s: &Stack) {
        let prefix = match self.prefix_ids.get(s.prefix) {
            Some(&id) => id,
            None => {
                let id = self.prefixes.len() as u32;
                self.prefixes.push(s.prefix.to_vec());
                self.prefix_ids.insert(s.prefix.to_vec(), id);
                id
            }
        };
        let leaf_key = s.leaf.map(str::to_string);
        let leaf = match self.leaf_ids.get(&leaf_key) {
            Some(&id) => id,
            None => {
                let id = self.leaves.len() as u32;
                self.leaves.push(leaf_key.clone());
                self.leaf_ids.insert(leaf_key, id);
                id
            }
        };
        let key = Key { pid: s.pid, user: s.user, kernel: s.kernel, prefix, leaf, above: s.above };
        let e = self.weights.entry(key).or_insert((0, s.ts));
        e.0 = e.0.saturating_add(s.weight);
    }

    /// Rescales the stacks under each prefix of `totals` so that their weights add up to its
    /// total (keeping their shares; the remainder of the rounding goes to the heaviest). One
    /// pass over the stacks for all prefixes.
    pub fn scale_prefixes<'p>(&mut self, totals: impl IntoIterator<Item = (&'p [String], u64)>) {
        let mut want: FxHashMap<u32, u64> = FxHashMap::default();
        for (prefix, total) in totals {
            if let Some(&id) = self.prefix_ids.get(prefix) {
                want.insert(id, total);
            }
        }
        let mut sums: FxHashMap<u32, u64> = FxHashMap::default();
        for (k, w) in &self.weights {
            if want.contains_key(&k.prefix) {
                let sum = sums.entry(k.prefix).or_default();
                *sum = sum.saturating_add(w.0);
            }
        }
        // Per prefix: what was given so far, and its heaviest stack.
        let mut given: FxHashMap<u32, (u64, Option<(u64, Key)>)> = FxHashMap::default();
        for (k, w) in self.weights.iter_mut() {
            let (Some(&total), Some(&sum)) = (want.get(&k.prefix), sums.get(&k.prefix)) else { continue };
            if sum == 0 {
                continue;
            }
            let before = w.0;
            w.0 = ((w.0 as u128 * total as u128) / sum as u128) as u64;
            let g = given.entry(k.prefix).or_insert((0, None));
            g.0 = g.0.saturating_add(w.0);
            if g.1.is_none_or(|(heaviest, _)| before > heaviest) {
                g.1 = Some((before, *k));
            }
        }
        for (prefix, (sum, heaviest)) in given {
            if let Some((_, key)) = heaviest
                && let Some(w) = self.weights.get_mut(&key)
            {
                w.0 = w.0.saturating_add(want[&prefix].saturating_sub(sum));
            }
        }
    }

    /// Distinct stacks so far.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The folded lines (sorted, so the output is the same from run to run), symbolizing every
    /// distinct stack once. `stacks`: the stack table (id → frames, leaf first).
    pub fn fold(&self, sym: &mut Symbolizer, stacks: &FxHashMap<u32, Vec<u64>>) -> Vec<(String, u64)> {
        let frames = |id: Option<u32>| id.and_then(|id| stacks.get(&id)).map_or(&[][..], |v| v.as_slice());
        for (k, (_, ts)) in &self.weights {
            sym.want_user(k.pid, *ts, frames(k.user));
            if let Some((pid, user, _)) = k.above {
                sym.want_user(pid, *ts, frames(user));
            }
        }
        sym.resolve();
        let mut lines: FxHashMap<String, u64> = FxHashMap::default();
        let mut names = Vec::new();
        for (k, (weight, ts)) in &self.weights {
            names.clear();
            names.extend(self.prefixes[k.prefix as usize].iter().map(|p| clean(p)));
            sym.user_frames(k.pid, *ts, frames(k.user), &mut names);
            sym.kernel_frames(frames(k.kernel), &mut names);
            if let Some(leaf) = &self.leaves[k.leaf as usize] {
                names.push(leaf.clone());
            }
            if let Some((pid, user, kernel)) = k.above {
                // Leaf first: the waker's kernel frames from the top, then its user frames.
                names.push("--".into());
                let start = names.len();
                sym.user_frames(pid, *ts, frames(user), &mut names);
                sym.kernel_frames(frames(kernel), &mut names);
                names[start..].reverse();
            }
            if names.is_empty() {
                names.push("[no stack]".into());
            }
            let line = names.iter().map(|n| clean(n)).collect::<Vec<_>>().join(";");
            let sum = lines.entry(line).or_default();
            *sum = sum.saturating_add(*weight);
        }
        let mut out: Vec<(String, u64)> = lines.into_iter().collect();
        out.sort();
        out
    }
}

/// A frame name as a folded line can hold it: no `;` (the separator) and no newline.
fn clean(name: &str) -> String {
    if name.contains([';', '\n', '\r']) { name.replace([';', '\n', '\r'], ":") } else { name.to_string() }
}

/// Folded lines as text, one per line.
pub fn to_text(lines: &[(String, u64)]) -> String {
    let mut out = String::new();
    for (stack, n) in lines {
        out.push_str(stack);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::KERNEL_START;

    #[test]
    fn equal_stacks_add_up_and_lines_go_root_to_leaf() {
        let mut table = FxHashMap::default();
        table.insert(1, vec![KERNEL_START + 2, KERNEL_START + 1]); // leaf first
        let kernel = vec![(KERNEL_START + 1, "do_syscall".into()), (KERNEL_START + 2, "schedule".into())];
        let mut sym = Symbolizer::new(Vec::new(), kernel);
        let mut f = Folder::new();
        let task = vec!["app (pid 5)".to_string(), "task 7".to_string()];
        for w in [10, 5] {
            f.add(&Stack {
                pid: 5,
                ts: 0,
                user: None,
                kernel: Some(1),
                prefix: &task,
                leaf: Some("[sleep]"),
                above: None,
                weight: w,
            });
        }
        f.add(&Stack {
            pid: 5,
            ts: 0,
            user: None,
            kernel: None,
            prefix: &[],
            leaf: None,
            above: None,
            weight: 3,
        });
        assert_eq!(f.len(), 2);
        let lines = f.fold(&mut sym, &table);
        assert_eq!(
            lines,
            vec![
                ("[no stack]".to_string(), 3),
                ("app (pid 5);task 7;do_syscall_[k];schedule_[k];[sleep]".to_string(), 15),
            ]
        );
        assert_eq!(to_text(&lines).lines().count(), 2);
        // Scaled to a total, shares kept; a waker's stack on top after `--`, leaf first.
        f.scale_prefixes([(task.as_slice(), 1_000)]);
        f.add(&Stack {
            pid: 5,
            ts: 0,
            user: None,
            kernel: None,
            prefix: &[],
            leaf: Some("[sleep]"),
            above: Some((5, None, Some(1))),
            weight: 2,
        });
        let lines = f.fold(&mut sym, &table);
        assert!(
            lines.contains(&("app (pid 5);task 7;do_syscall_[k];schedule_[k];[sleep]".to_string(), 1_000)),
            "{lines:?}"
        );
        assert!(lines.contains(&("[sleep];--;schedule_[k];do_syscall_[k]".to_string(), 2)), "{lines:?}");
        assert_eq!(clean("a;b\nc"), "a:b:c");
    }
}
