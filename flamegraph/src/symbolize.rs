//! Addresses to function names.
//!
//! User addresses go through the process's executable mappings, as the recording kept them: the
//! mapping an address falls in gives the file and the offset in it, and blazesym names that
//! offset from the file's symbols and DWARF (inlined functions included, names demangled). Each
//! file is looked at once: its build id checked against the recorded one, and every offset
//! asked of it resolved in one batch. Kernel addresses are named from the table the recording
//! resolved through kallsyms when it ended.
//!
//! A frame that cannot be named says why, in brackets: `[unknown]` (no mapping covers it),
//! `[libfoo.so+0x1234]` (the file is gone, is another build, or has no symbol there).

use std::path::{Path, PathBuf};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Kernel, Source},
};
use rustc_hash::FxHashMap;

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub path: PathBuf,
    /// The file's GNU build id (hex) when recorded.
    pub build_id: Option<String>,
}

/// How the frames asked for fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolStats {
    pub frames: u64,
    pub resolved: u64,
    /// No recorded mapping covers the address.
    pub no_mapping: u64,
    /// The mapped file is not at its path any more.
    pub no_file: u64,
    /// The file at the path is another build than the one recorded.
    pub other_build: u64,
    /// The file has no symbol for the address.
    pub no_symbol: u64,
    /// The file is there but could not be parsed (a malformed ELF or DWARF).
    pub bad_file: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileState {
    Unchecked,
    Usable,
    Missing,
    OtherBuild,
    /// Parsing it failed (blazesym gave an error or panicked).
    Malformed,
}

struct File {
    path: PathBuf,
    build_id: Option<String>,
    state: FileState,
}

/// The outcome of naming one address: the functions at it, outermost first (an inlined call
/// adds one), or why there are none.
#[derive(Clone, Debug)]
enum Named {
    Functions(Vec<String>),
    Unnamed(String),
}

/// Names the addresses of stacks. Ask first ([`Self::want_user`]), then [`Self::resolve`], then
/// read the names ([`Self::user_frames`]): every file is then opened once.
pub struct Symbolizer {
    blaze: Blaze,
    /// Per process: snapshots of its mappings (time, mappings), by time.
    maps: FxHashMap<u32, Vec<(u64, Vec<Mapping>)>>,
    /// Per process: when it exec'd, in order (an exec replaces every mapping).
    execs: FxHashMap<u32, Vec<u64>>,
    files: Vec<File>,
    file_index: FxHashMap<PathBuf, usize>,
    /// Names by (file, offset in it).
    named: FxHashMap<(usize, u64), Named>,
    pending: FxHashMap<usize, Vec<u64>>,
    kernel: Vec<(u64, String)>,
    stats: SymbolStats,
    /// Open the mapped files (off: every user frame is named by file and offset).
    read_files: bool,
}

/// Kernel text lives in the upper half of the address space on x86-64.
pub const KERNEL_START: u64 = 0xffff_8000_0000_0000;

impl Symbolizer {
    /// A symbolizer over the mapping snapshots `(pid, time, mappings)` of a recording and the
    /// kernel functions it resolved (address → name).
    pub fn new(
        snapshots: impl IntoIterator<Item = (u32, u64, Vec<Mapping>)>,
        mut kernel: Vec<(u64, String)>,
    ) -> Self {
        let mut maps: FxHashMap<u32, Vec<(u64, Vec<Mapping>)>> = FxHashMap::default();
        let mut files = Vec::new();
        let mut file_index = FxHashMap::default();
        for (pid, ts, mut m) in snapshots {
            m.sort_by_key(|m| m.start);
            for mapping in &m {
                file_index.entry(mapping.path.clone()).or_insert_with(|| {
                    files.push(File {
                        path: mapping.path.clone(),
                        build_id: mapping.build_id.clone(),
                        state: FileState::Unchecked,
                    });
                    files.len() - 1
                });
            }
            maps.entry(pid).or_default().push((ts, m));
        }
        for v in maps.values_mut() {
            v.sort_by_key(|s| s.0);
        }
        kernel.sort_unstable_by_key(|k| k.0);
        let blaze =
            Blaze::builder().enable_code_info(false).enable_inlined_fns(true).enable_demangling(true).build();
        Symbolizer {
            blaze,
            maps,
            execs: FxHashMap::default(),
            files,
            file_index,
            named: FxHashMap::default(),
            pending: FxHashMap::default(),
            kernel,
            stats: SymbolStats::default(),
            read_files: true,
        }
    }

    /// Names user frames by file and offset only, without opening any file.
    pub fn without_files(mut self) -> Self {
        self.read_files = false;
        self
    }

    /// The moments processes exec'd `(pid, time)`: a stack is named from the snapshots of its
    /// process's image at the time (taken after the last exec before it, before the next one).
    pub fn with_execs(mut self, execs: impl IntoIterator<Item = (u32, u64)>) -> Self {
        for (pid, ts) in execs {
            self.execs.entry(pid).or_default().push(ts);
        }
        for v in self.execs.values_mut() {
            v.sort_unstable();
        }
        self
    }

    /// The mapping of process `pid` at `ts` that holds `addr`: from the snapshot in force then
    /// (or the first one of that image, for a moment before it was read), then from any other
    /// snapshot of the same image (a mapping gone later, or made and read later, was the same
    /// file at the same place).
    fn mapping(&self, pid: u32, ts: u64, addr: u64) -> Option<&Mapping> {
        let snaps = self.maps.get(&pid)?;
        let (from, to) = match self.execs.get(&pid) {
            Some(execs) => {
                let i = execs.partition_point(|&e| e <= ts);
                (if i == 0 { 0 } else { execs[i - 1] }, execs.get(i).copied().unwrap_or(u64::MAX))
            }
            None => (0, u64::MAX),
        };
        let (lo, hi) = (snaps.partition_point(|s| s.0 < from), snaps.partition_point(|s| s.0 < to));
        let image = &snaps[lo..hi];
        if image.is_empty() {
            return None;
        }
        let at = image.partition_point(|s| s.0 <= ts).max(1) - 1;
        std::iter::once(&image[at]).chain(image.iter()).find_map(|(_, maps)| {
            let i = maps.partition_point(|m| m.start <= addr);
            maps[..i].last().filter(|m| addr < m.end)
        })
    }

    fn key(&self, pid: u32, ts: u64, addr: u64) -> Option<(usize, u64)> {
        let m = self.mapping(pid, ts, addr)?;
        let file = *self.file_index.get(&m.path)?;
        Some((file, (addr - m.start).checked_add(m.offset)?))
    }

    /// Asks for the names of a user stack of process `pid` at `ts` (leaf first).
    pub fn want_user(&mut self, pid: u32, ts: u64, addrs: &[u64]) {
        for (i, &a) in addrs.iter().enumerate() {
            if let Some(key) = self.key(pid, ts, return_site(i, a))
                && !self.named.contains_key(&key)
            {
                self.named.insert(key, Named::Unnamed(String::new())); // asked once
                self.pending.entry(key.0).or_default().push(key.1);
            }
        }
    }

    /// Resolves everything asked for: each file once, all its offsets in one batch.
    pub fn resolve(&mut self) {
        for (file, offsets) in std::mem::take(&mut self.pending) {
            let state = self.check(file);
            let base = base_name(&self.files[file].path);
            let unnamed = |off: u64| Named::Unnamed(format!("[{base}+{off:#x}]"));
            if state != FileState::Usable {
                for off in offsets {
                    self.named.insert((file, off), unnamed(off));
                }
                continue;
            }
            let src = Source::Elf(Elf::new(&self.files[file].path));
            let blaze = &self.blaze;
            let result = parsing_untrusted_file(|| {
                // Names made into owned strings inside the guard: nothing borrowed from a
                // parser that panicked is kept.
                blaze.symbolize(&src, Input::FileOffset(&offsets)).map(|syms| {
                    syms.into_iter()
                        .map(|s| match s {
                            Symbolized::Sym(sym) => {
                                let mut chain = vec![sym.name.to_string()];
                                chain.extend(sym.inlined.iter().map(|f| f.name.to_string()));
                                Some(chain)
                            }
                            Symbolized::Unknown(_) => None,
                        })
                        .collect::<Vec<_>>()
                })
            });
            let Some(Ok(syms)) = result else {
                self.files[file].state = FileState::Malformed;
                for off in offsets {
                    self.named.insert((file, off), unnamed(off));
                }
                continue;
            };
            for (off, s) in offsets.iter().zip(syms) {
                let named = match s {
                    Some(chain) => Named::Functions(chain),
                    None => unnamed(*off),
                };
                self.named.insert((file, *off), named);
            }
        }
    }

    /// Whether file `i` is there and the build the recording saw.
    fn check(&mut self, i: usize) -> FileState {
        let f = &mut self.files[i];
        if f.state == FileState::Unchecked {
            // Only regular files: a path in a trace may name anything (a FIFO would block).
            let regular = self.read_files && std::fs::metadata(&f.path).is_ok_and(|m| m.is_file());
            let found = if regular { sched_trace_binaries::build_id(&f.path).ok() } else { None };
            f.state = match found {
                None => FileState::Missing,
                Some(found) => match (&f.build_id, found) {
                    (Some(want), Some(got)) if *want != sched_trace_binaries::hex(&got) => {
                        FileState::OtherBuild
                    }
                    _ => FileState::Usable,
                },
            };
        }
        f.state
    }

    /// The names of a user stack (leaf first), appended to `out` root first, an inlined call
    /// as its own frame.
    pub fn user_frames(&mut self, pid: u32, ts: u64, addrs: &[u64], out: &mut Vec<String>) {
        for (i, &a) in addrs.iter().enumerate().rev() {
            self.stats.frames += 1;
            let Some(key) = self.key(pid, ts, return_site(i, a)) else {
                self.stats.no_mapping += 1;
                out.push("[unknown]".into());
                continue;
            };
            match self.named.get(&key) {
                Some(Named::Functions(chain)) => {
                    self.stats.resolved += 1;
                    out.extend(chain.iter().cloned());
                }
                Some(Named::Unnamed(why)) if !why.is_empty() => {
                    match self.files[key.0].state {
                        FileState::Missing => self.stats.no_file += 1,
                        FileState::OtherBuild => self.stats.other_build += 1,
                        FileState::Malformed => self.stats.bad_file += 1,
                        _ => self.stats.no_symbol += 1,
                    }
                    out.push(why.clone());
                }
                // Not asked for before `resolve`: named by offset only.
                _ => {
                    self.stats.no_symbol += 1;
                    out.push(format!("[{}+{:#x}]", base_name(&self.files[key.0].path), key.1));
                }
            }
        }
    }

    /// The names of a kernel stack (leaf first), appended to `out` root first, marked `_[k]`.
    /// A stack taken inside a probe starts with the tracing machinery (the BPF program,
    /// `bpf_trace_run4`): those frames are not the traced code, and are left out.
    pub fn kernel_frames(&mut self, addrs: &[u64], out: &mut Vec<String>) {
        let skip = addrs
            .iter()
            .take(MACHINERY_DEPTH)
            .rposition(|a| self.kernel_name(*a).is_some_and(is_tracing_machinery))
            .map_or(0, |i| i + 1);
        for &a in addrs[skip..].iter().rev() {
            self.stats.frames += 1;
            match self.kernel_name(a).map(|name| format!("{name}_[k]")) {
                Some(frame) => {
                    self.stats.resolved += 1;
                    out.push(frame);
                }
                None => {
                    self.stats.no_symbol += 1;
                    out.push("[unknown]_[k]".into());
                }
            }
        }
    }

    fn kernel_name(&self, addr: u64) -> Option<&str> {
        let i = self.kernel.binary_search_by_key(&addr, |k| k.0).ok()?;
        Some(&self.kernel[i].1)
    }

    pub fn stats(&self) -> SymbolStats {
        self.stats
    }
}

/// Runs `parse` (blazesym on a file a trace names) so that a panic in it makes the file
/// unusable instead of ending the program: the path may name anything (a trace read on another
/// machine, a file replaced since), and blazesym 0.2.7's ELF and DWARF parsers overflow on some
/// malformed files (found by the fuzz harness's `elf` target: `elf/parser.rs`,
/// `dwarf/units.rs`) — a panic with overflow checks, a wrong offset without. The panic's message
/// is kept off stderr: the frames say `[file+0xoff]` and the summary counts them.
fn parsing_untrusted_file<T>(parse: impl FnOnce() -> T) -> Option<T> {
    use std::{cell::Cell, panic, sync::Once};
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(panic::AssertUnwindSafe(parse));
    QUIET.with(|q| q.set(false));
    result.ok()
}

/// How far from the leaf of a kernel stack the tracing machinery can reach.
const MACHINERY_DEPTH: usize = 5;

/// The kernel functions that run a BPF program from a tracepoint.
fn is_tracing_machinery(name: &str) -> bool {
    name.starts_with("bpf_trace_run") || name.starts_with("__bpf_trace_") || name.starts_with("__traceiter_")
}

/// The address to name for frame `i` of a stack, leaf first: the leaf is where the thread was;
/// the others are return addresses, one past the call that is their frame's line.
fn return_site(i: usize, addr: u64) -> u64 {
    if i == 0 { addr } else { addr.saturating_sub(1) }
}

fn base_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Names kernel addresses through the running kernel's kallsyms (when recording ends, so that the
/// trace carries them): (address, function) for each address that resolves.
pub fn kernel_symbols(addrs: &[u64]) -> Result<Vec<(u64, String)>, String> {
    let mut addrs: Vec<u64> = addrs.iter().copied().filter(|a| *a >= KERNEL_START).collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    let blaze = Blaze::builder().enable_code_info(false).enable_inlined_fns(false).build();
    let src = Source::Kernel(Kernel::default());
    let syms = blaze.symbolize(&src, Input::AbsAddr(&addrs)).map_err(|e| e.to_string())?;
    Ok(addrs
        .iter()
        .zip(syms)
        .filter_map(|(a, s)| match s {
            Symbolized::Sym(sym) => Some((*a, sym.name.to_string())),
            Symbolized::Unknown(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function of this test binary, to find by address.
    #[inline(never)]
    #[unsafe(no_mangle)]
    pub extern "C" fn sched_trace_symbolize_probe_fn() -> u64 {
        std::hint::black_box(42)
    }

    /// This process's mappings, as the recorder reads them.
    fn own_mappings() -> Vec<Mapping> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (start, end) = f.first()?.split_once('-')?;
                if !f.get(1)?.contains('x') || f.len() < 6 || !f[5].starts_with('/') {
                    return None;
                }
                Some(Mapping {
                    start: u64::from_str_radix(start, 16).ok()?,
                    end: u64::from_str_radix(end, 16).ok()?,
                    offset: u64::from_str_radix(f[2], 16).ok()?,
                    path: f[5].into(),
                    build_id: None,
                })
            })
            .collect()
    }

    #[test]
    fn names_a_function_of_a_mapped_file_and_says_why_when_it_cannot() {
        let addr = sched_trace_symbolize_probe_fn as *const () as u64;
        let mut s = Symbolizer::new([(7, 0, own_mappings())], Vec::new());
        // A leaf frame at the function, and an address no mapping holds.
        s.want_user(7, 10, &[addr + 1, 0x10]);
        s.resolve();
        let mut out = Vec::new();
        s.user_frames(7, 10, &[addr + 1, 0x10], &mut out);
        assert_eq!(out[0], "[unknown]", "root first: the unmapped frame");
        assert!(out[1].contains("sched_trace_symbolize_probe_fn"), "{out:?}");
        assert_eq!((s.stats().resolved, s.stats().no_mapping), (1, 1));
        // Another build of the file: named by offset, counted.
        let mut maps = own_mappings();
        for m in &mut maps {
            m.build_id = Some("00".into());
        }
        let mut s = Symbolizer::new([(7, 0, maps)], vec![(KERNEL_START + 16, "schedule".into())]);
        s.want_user(7, 0, &[addr]);
        s.resolve();
        let mut out = Vec::new();
        s.user_frames(7, 0, &[addr], &mut out);
        s.kernel_frames(&[KERNEL_START + 16, KERNEL_START + 17], &mut out);
        assert!(out[0].starts_with('[') && out[0].contains("+0x"), "{out:?}");
        assert_eq!(&out[1..], ["[unknown]_[k]", "schedule_[k]"]);
        assert_eq!(s.stats().other_build, 1);
        // A stack taken in a probe: the program and its runner are left out.
        let mut s = Symbolizer::new(
            [],
            vec![
                (KERNEL_START + 1, "bpf_prog_x".into()),
                (KERNEL_START + 2, "bpf_trace_run4".into()),
                (KERNEL_START + 3, "__schedule".into()),
            ],
        );
        let mut out = Vec::new();
        s.kernel_frames(&[KERNEL_START + 1, KERNEL_START + 2, KERNEL_START + 3], &mut out);
        assert_eq!(out, ["__schedule_[k]"]);
    }

    /// Names offsets across the whole of `file` mapped at 0x10000 (as the fuzz harness's ELF
    /// target asks them: stacks of 16, every 1/512 of the file).
    fn name_offsets_across(file: &Path) -> (Vec<String>, SymbolStats) {
        let len = std::fs::metadata(file).unwrap().len();
        let mapping =
            Mapping { start: 0x10000, end: 0x10000 + len, offset: 0, path: file.into(), build_id: None };
        let mut s = Symbolizer::new([(1, 0, vec![mapping])], Vec::new());
        let addrs: Vec<u64> =
            (0..len).step_by((len as usize / 512).max(1)).map(|off| 0x10000 + off).collect();
        for stack in addrs.chunks(16) {
            s.want_user(1, 0, stack);
        }
        s.resolve();
        let mut out = Vec::new();
        for stack in addrs.chunks(16) {
            s.user_frames(1, 0, stack, &mut out);
        }
        (out, s.stats())
    }

    #[test]
    fn a_file_the_parser_cannot_read_is_counted_and_named_by_offset() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/elf");
        let (names, stats) = name_offsets_across(&corpus.join("tiny-dwarf.elf"));
        assert!(names.iter().any(|n| n == "sum_squares"), "{names:?}");
        assert_eq!(stats.bad_file, 0);
        // Inputs on which blazesym 0.2.7 overflows (with overflow checks, as in this build).
        let mut malformed = 0;
        for entry in std::fs::read_dir(&corpus).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("found-blazesym")) {
                let (names, stats) = name_offsets_across(&path);
                assert_eq!(names.len() as u64, stats.frames);
                malformed += u64::from(stats.bad_file > 0);
            }
        }
        if cfg!(debug_assertions) {
            assert!(malformed >= 1, "no found-blazesym input made the parser fail");
        }
    }

    #[test]
    fn a_stack_after_an_exec_is_named_from_the_new_image_even_before_it_was_read() {
        let addr = sched_trace_symbolize_probe_fn as *const () as u64;
        // Before the exec at 50 the process was another program, mapped at the same place.
        let before: Vec<Mapping> =
            own_mappings().into_iter().map(|m| Mapping { path: "/gone/old-program".into(), ..m }).collect();
        let snaps = [(7, 0, before), (7, 100, own_mappings())];
        let name_at = |ts: u64| {
            let mut s = Symbolizer::new(snaps.clone(), Vec::new()).with_execs([(7, 50)]);
            s.want_user(7, ts, &[addr]);
            s.resolve();
            let mut out = Vec::new();
            s.user_frames(7, ts, &[addr], &mut out);
            out.remove(0)
        };
        assert!(name_at(60).contains("sched_trace_symbolize_probe_fn"), "{}", name_at(60));
        assert!(name_at(40).starts_with("[old-program+"), "{}", name_at(40));
    }
}
