//! Go executables: what the recorder needs to follow goroutines from outside the process.
//!
//! - the build info (`.go.buildinfo`: Go version, module, build settings) and the function table
//!   (`.gopclntab`), both kept by stripped builds, through the `gobin` crate;
//! - the runtime's struct layouts (`g`, `m`, `pollDesc`) and constants (`_G*` statuses, wait
//!   reasons) from the binary's DWARF through `gimli`, or, when it was stripped, from the table
//!   generated from DWARF for each supported Go version ([`super::go_layouts`]);
//! - the thread-local slot of the current `g`, decoded from the runtime's own code.
//!
//! Nothing here trusts the file: every offset and count is checked before use, and a binary
//! that does not say enough is an error that names what is missing.

use std::{borrow::Cow, collections::BTreeMap, path::Path};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use serde::{Deserialize, Serialize};

/// Why a Go executable could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} is not an ELF file: {1}")]
    NotElf(String, String),
    #[error("{0} is not a Go program (no Go build info)")]
    NotGo(String),
    #[error("{path} is a Go program for {arch}; only amd64 is supported")]
    Arch { path: String, arch: String },
    #[error("{path}: Go version {version:?} is not one this reads")]
    Version { path: String, version: String },
    #[error(
        "{path} was built by {version} without DWARF, and the layout table has no entry for \
         Go {major}.{minor} (it covers {covered}): goroutines cannot be followed; threads are \
         traced as usual. Rebuild without -ldflags=-w, or use a supported Go version"
    )]
    NoLayout { path: String, version: String, major: u32, minor: u32, covered: String },
    #[error("{path}: the runtime's DWARF lacks {what}")]
    Dwarf { path: String, what: String },
    #[error("{path}: {what}")]
    Code { path: String, what: String },
}

/// A Go toolchain version, `go1.23.9` → 1, 23, 9.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// As the binary says it (`go1.23.9`, `go1.24rc1`, `devel go1.25-abcdef`).
    pub text: String,
}

impl GoVersion {
    /// Parses the version string of `runtime.Version()`.
    pub fn parse(text: &str) -> Option<GoVersion> {
        let rest = text.trim().trim_start_matches("devel ");
        let rest = rest.strip_prefix("go")?;
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let mut parts = rest[..end].split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(GoVersion { major, minor, patch, text: text.trim().to_string() })
    }
}

/// Byte offsets of the runtime's fields the probes read, and the values of its constants, for
/// one Go version (or one binary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoLayout {
    pub g_m: u32,
    pub g_atomicstatus: u32,
    pub g_goid: u32,
    pub g_waitreason: u32,
    pub g_startpc: u32,
    pub m_procid: u32,
    pub m_curg: u32,
    pub polldesc_rg: u32,
    pub polldesc_wg: u32,
    /// `runtime._G*` goroutine statuses by name (`_Grunning` → 2).
    pub statuses: BTreeMap<String, u64>,
    /// `runtime.waitReason*` by value (`14` → `waitReasonChanReceive`).
    pub wait_reasons: BTreeMap<u64, String>,
    /// `runtime.stw*` stop-the-world reasons by value (`stwGCMarkTerm`).
    #[serde(default)]
    pub stw_reasons: BTreeMap<u64, String>,
}

impl GoLayout {
    /// The `_G*` statuses by value (`2` → `_Grunning`), as the probe tables name them.
    pub fn statuses_by_value(&self) -> BTreeMap<u64, String> {
        self.statuses.iter().map(|(name, value)| (*value, name.clone())).collect()
    }
}

/// Where one field's offset goes in a [`GoLayout`].
type FieldSlot = fn(&mut GoLayout) -> &mut u32;

/// The fields a layout needs: (struct, member, where it goes).
const FIELDS: [(&str, &str, FieldSlot); 9] = [
    ("runtime.g", "m", |l| &mut l.g_m),
    ("runtime.g", "atomicstatus", |l| &mut l.g_atomicstatus),
    ("runtime.g", "goid", |l| &mut l.g_goid),
    ("runtime.g", "waitreason", |l| &mut l.g_waitreason),
    ("runtime.g", "startpc", |l| &mut l.g_startpc),
    ("runtime.m", "procid", |l| &mut l.m_procid),
    ("runtime.m", "curg", |l| &mut l.m_curg),
    ("runtime.pollDesc", "rg", |l| &mut l.polldesc_rg),
    ("runtime.pollDesc", "wg", |l| &mut l.polldesc_wg),
];

/// Where a layout came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// The binary's own DWARF.
    Dwarf,
    /// The generated table's entry for this Go major.minor (the binary has no DWARF).
    Table,
}

/// Where one of the runtime's scheduling points can be probed (the full level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoProbeSite {
    /// What the point is: `execute`, `gopark`, `ready`, `goroutine_ready`, `goexit`, `gosched`,
    /// `preempt_park`, `stw_stop`, `stw_start`, `newproc`.
    pub point: &'static str,
    /// The function it is in, and the address and file offset of the instruction probed.
    pub function: String,
    pub address: u64,
    pub file_offset: u64,
}

/// The runtime functions probed at entry (after their stack-check prologue), by point.
const ENTRY_POINTS: [(&str, &str); 16] = [
    ("execute", "runtime.execute"),
    ("gopark", "runtime.gopark"),
    ("ready", "runtime.ready"),
    ("goroutine_ready", "runtime.goroutineReady"),
    ("goexit", "runtime.goexit0"),
    // The netpoller found an fd ready: the goroutines parked on it become runnable.
    ("netpollready", "runtime.netpollready"),
    // Taken off its thread without parking: Gosched or a preemption (it stays runnable)...
    ("gosched", "runtime.goschedImpl"),
    // ...or stopped by a preemption request until the suspender lets it go (it is readied).
    ("preempt_park", "runtime.preemptPark"),
    // Stop-the-world, with its reason, and the restart.
    ("stw_stop", "runtime.stopTheWorldWithSema"),
    ("stw_start", "runtime.startTheWorldWithSema"),
    // Attached only on request (`--go-casgstatus`), for they fire several times per switch:
    // every status change of a goroutine, and its system calls (from Go 1.26 the runtime changes
    // the status around one without `casgstatus`). All `nosplit`: no stack check, the first
    // instruction is the `push %rbp`.
    ("casgstatus", "runtime.casgstatus"),
    ("syscall_enter", "runtime.reentersyscall"),
    ("syscall_enter_block", "runtime.entersyscallblock"),
    ("syscall_exit", "runtime.exitsyscall"),
    // ...whose slow path found no P: the goroutine goes to a run queue, its thread to sleep
    // (`mcall`ed, the goroutine in RAX). Named so from Go 1.26, `exitsyscall0` before.
    ("syscall_exit_no_p", "runtime.exitsyscallNoP"),
    ("syscall_exit_no_p", "runtime.exitsyscall0"),
];

/// The probe points attached only on request (see [`ENTRY_POINTS`]).
pub const ON_REQUEST_POINTS: [&str; 5] =
    ["casgstatus", "syscall_enter", "syscall_enter_block", "syscall_exit", "syscall_exit_no_p"];

/// One function of the binary: entry address (link-time virtual address) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunction {
    pub entry: u64,
    pub name: String,
}

/// What the recorder knows about one Go executable.
#[derive(Clone, Debug)]
pub struct GoBinary {
    pub path: String,
    pub version: GoVersion,
    /// The main package's import path (`github.com/x/y/cmd/z`) and module (`github.com/x/y`).
    pub main_path: String,
    pub main_module: String,
    /// Build settings (`GOARCH`, `CGO_ENABLED`, `-ldflags`, `vcs.revision`, …).
    pub settings: Vec<(String, String)>,
    pub layout: GoLayout,
    pub layout_source: LayoutSource,
    /// Offset from the thread pointer (`fsbase`) of the slot holding the current `g`.
    pub tls_g_offset: i64,
    /// Every function of `.gopclntab`, by entry address.
    pub functions: Vec<GoFunction>,
    /// Addresses of runtime globals the recorder reads (`runtime.gomaxprocs`), when the symbol
    /// table is there.
    pub globals: BTreeMap<String, u64>,
    /// Whether the image is position-independent (its addresses move with the load address)...
    pub position_independent: bool,
    /// ...and the link-time address of its first byte (the segment at file offset 0): the load
    /// bias is where that page is mapped, less this.
    pub image_base: u64,
    /// The runtime's scheduling points this binary can be probed at (see [`GoProbeSite`]), and
    /// why the others cannot (`point: why`).
    pub probe_sites: Vec<GoProbeSite>,
    pub missing_sites: Vec<String>,
    /// The functions the compiler's `go` statement wrappers (`main.main.gowrap3`: a `go f(x)`
    /// with arguments) call, by wrapper entry: the function the goroutine really runs.
    pub wrapped: BTreeMap<u64, String>,
}

impl GoBinary {
    /// Reads the Go executable at `path`. `Ok(None)`: an ELF file that is not a Go program.
    pub fn open(path: &Path) -> Result<Option<GoBinary>, GoError> {
        let name = path.display().to_string();
        let io = |source| GoError::Io { path: name.clone(), source };
        // The section headers first (the recorder asks this of every executable a traced
        // process execs): only a Go program is read whole.
        {
            let file = std::fs::File::open(path).map_err(io)?;
            let cache = object::ReadCache::new(file);
            let elf =
                object::File::parse(&cache).map_err(|e| GoError::NotElf(name.clone(), e.to_string()))?;
            if !has_go_sections(&elf) {
                return Ok(None);
            }
        }
        let data = std::fs::read(path).map_err(io)?;
        GoBinary::parse(&name, &data)
    }

    /// Reads a Go executable from its bytes; `name` is what errors call it.
    pub fn parse(name: &str, data: &[u8]) -> Result<Option<GoBinary>, GoError> {
        let elf = object::File::parse(data).map_err(|e| GoError::NotElf(name.into(), e.to_string()))?;
        if !has_go_sections(&elf) {
            return Ok(None);
        }
        let Some(go) = gobin::GoBinary::parse(data) else { return Ok(None) };
        let info = go.build_info();
        let version_text = info.and_then(|i| i.go_version).or(go.go_version()).unwrap_or_default();
        if version_text.is_empty() {
            return Err(GoError::NotGo(name.into()));
        }
        let version = GoVersion::parse(version_text)
            .ok_or_else(|| GoError::Version { path: name.into(), version: version_text.into() })?;
        let settings: Vec<(String, String)> = info
            .map(|i| i.build_settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .unwrap_or_default();
        let arch = settings.iter().find(|(k, _)| k == "GOARCH").map(|(_, v)| v.clone());
        let arch = arch.unwrap_or_else(|| {
            if elf.architecture() == object::Architecture::X86_64 { "amd64".into() } else { "other".into() }
        });
        if arch != "amd64" || elf.architecture() != object::Architecture::X86_64 {
            return Err(GoError::Arch { path: name.into(), arch });
        }

        let mut functions: Vec<GoFunction> = go
            .functions()
            .filter_map(|f| {
                let entry = go.text_va()?.checked_add(u64::from(f.entry_offset))?;
                Some(GoFunction { entry, name: f.name.to_string() })
            })
            .collect();
        functions.sort_by_key(|f| f.entry);
        functions.dedup_by_key(|f| f.entry);
        if functions.is_empty() {
            return Err(GoError::Code {
                path: name.into(),
                what: "its .gopclntab lists no functions".into(),
            });
        }

        let (layout, layout_source) = match dwarf_layout(name, &elf)? {
            Some(l) => (l, LayoutSource::Dwarf),
            None => match crate::go_layouts::for_version(version.major, version.minor) {
                Some(l) => (l, LayoutSource::Table),
                None => {
                    return Err(GoError::NoLayout {
                        path: name.into(),
                        version: version.text.clone(),
                        major: version.major,
                        minor: version.minor,
                        covered: crate::go_layouts::covered(),
                    });
                }
            },
        };

        let mut globals = BTreeMap::new();
        for s in elf.symbols() {
            if let Ok(n) = s.name()
                && matches!(n, "runtime.gomaxprocs" | "runtime.ncpu" | "runtime.allgs")
            {
                globals.insert(n.to_string(), s.address());
            }
        }
        let tls_g_offset = tls_g_offset(name, &elf, &functions)?;
        let wrapped = go_wrappers(&elf, &functions);
        let (probe_sites, missing_sites) = probe_sites(&elf, &functions);
        Ok(Some(GoBinary {
            path: name.into(),
            version,
            main_path: info.and_then(|i| i.main_path).unwrap_or_default().to_string(),
            main_module: info.and_then(|i| i.main_module).unwrap_or_default().to_string(),
            settings,
            layout,
            layout_source,
            tls_g_offset,
            functions,
            globals,
            position_independent: elf.kind() == object::ObjectKind::Dynamic,
            image_base: elf.segments().find(|seg| seg.file_range().0 == 0).map_or(0, |seg| seg.address()),
            wrapped,
            probe_sites,
            missing_sites,
        }))
    }

    /// The function `addr` (a link-time address) is in.
    pub fn function_at(&self, addr: u64) -> Option<&GoFunction> {
        let i = self.functions.partition_point(|f| f.entry <= addr).checked_sub(1)?;
        self.functions.get(i)
    }

    /// The name of the function a goroutine that started at `pc` runs: the function at `pc`, or
    /// for a `go` statement wrapper the function it calls.
    pub fn start_function(&self, pc: u64) -> Option<&str> {
        let f = self.function_at(pc)?;
        Some(self.wrapped.get(&f.entry).map_or(f.name.as_str(), String::as_str))
    }

    /// The entry address of the function named `name`.
    pub fn function(&self, name: &str) -> Option<u64> {
        named(&self.functions, name).map(|f| f.entry)
    }

    /// A build setting's value.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The layout from the binary's DWARF; `Ok(None)` when it has none (stripped with `-w`).
pub fn dwarf_layout(name: &str, elf: &object::File) -> Result<Option<GoLayout>, GoError> {
    if elf.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let dwarf_err = |what: String| GoError::Dwarf { path: name.into(), what };
    let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, GoError> {
        match elf.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data().map_err(|e| dwarf_err(format!("a readable {}: {e}", id.name()))),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let gerr = |e: gimli::Error| dwarf_err(format!("well-formed debug info ({e})"));

    let mut members: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    let mut wait_reasons = BTreeMap::new();
    let mut stw_reasons = BTreeMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(gerr)? {
        let unit = dwarf.unit(header).map_err(gerr)?;
        let mut entries = unit.entries();
        // The struct whose members are being read, and the depth of its children.
        let mut current: Option<(String, isize)> = None;
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs().map_err(gerr)? {
            depth += delta;
            if current.as_ref().is_some_and(|(_, d)| depth < *d) {
                current = None;
            }
            let name = match entry.attr_value(gimli::DW_AT_name).map_err(gerr)? {
                Some(v) => match dwarf.attr_string(&unit, v) {
                    Ok(s) => s.to_string_lossy().into_owned(),
                    Err(_) => continue,
                },
                None => continue,
            };
            match entry.tag() {
                gimli::DW_TAG_structure_type
                    if matches!(name.as_str(), "runtime.g" | "runtime.m" | "runtime.pollDesc") =>
                {
                    current = Some((name, depth + 1));
                }
                gimli::DW_TAG_member => {
                    if let Some((s, d)) = &current
                        && depth == *d
                        && let Some(off) =
                            entry.attr_value(gimli::DW_AT_data_member_location).map_err(gerr)?
                        && let Some(off) = off.udata_value()
                        && let Ok(off) = u32::try_from(off)
                    {
                        members.entry((s.clone(), name)).or_insert(off);
                    }
                }
                gimli::DW_TAG_constant => {
                    let value = entry.attr_value(gimli::DW_AT_const_value).map_err(gerr)?;
                    let Some(value) =
                        value.and_then(|v| v.udata_value().or(v.sdata_value().map(|s| s as u64)))
                    else {
                        continue;
                    };
                    // Statuses are `_G` and a lower-case word (`_Grunning`, `_Gscanwaiting`); the
                    // GC phases (`_GCoff`) and `_GoidCacheBatch` share the prefix.
                    if let Some(s) = name.strip_prefix("runtime._G")
                        && s.starts_with(|c: char| c.is_ascii_lowercase())
                        && !s.starts_with("oid")
                    {
                        statuses.insert(format!("_G{s}"), value);
                    } else if let Some(r) = name.strip_prefix("runtime.waitReason")
                        && !r.is_empty()
                    {
                        wait_reasons.insert(value, format!("waitReason{r}"));
                    } else if let Some(r) = name.strip_prefix("runtime.stw")
                        && r.starts_with(|c: char| c.is_ascii_uppercase())
                    {
                        stw_reasons.insert(value, format!("stw{r}"));
                    }
                }
                _ => {}
            }
        }
    }
    let mut layout = GoLayout {
        g_m: 0,
        g_atomicstatus: 0,
        g_goid: 0,
        g_waitreason: 0,
        g_startpc: 0,
        m_procid: 0,
        m_curg: 0,
        polldesc_rg: 0,
        polldesc_wg: 0,
        statuses,
        wait_reasons,
        stw_reasons,
    };
    for (s, m, slot) in FIELDS {
        *slot(&mut layout) = *members
            .get(&(s.to_string(), m.to_string()))
            .ok_or_else(|| dwarf_err(format!("the member {m} of {s}")))?;
    }
    for needed in ["_Grunning", "_Gsyscall", "_Gwaiting", "_Grunnable"] {
        if !layout.statuses.contains_key(needed) {
            return Err(dwarf_err(format!("the constant runtime.{needed}")));
        }
    }
    Ok(Some(layout))
}

/// Where the runtime keeps the current `g`: the displacement of the first `mov %fs:disp32, reg`
/// in `runtime.stackcheck` (or `runtime.systemstack`), as the Go linker wrote it for this
/// binary. The usual value is −8, but external linking and some PIE builds place the slot
/// elsewhere, and a wrong slot would read garbage as goroutines: so it is taken from the code or
/// the binary is refused.
fn tls_g_offset(name: &str, elf: &object::File, functions: &[GoFunction]) -> Result<i64, GoError> {
    for func in ["runtime.stackcheck", "runtime.systemstack"] {
        let Some(f) = named(functions, func) else { continue };
        let Some(code) = bytes_at(elf, f.entry, 64) else { continue };
        if let Some(off) = fs_displacement(code) {
            return Ok(off);
        }
    }
    Err(GoError::Code {
        path: name.into(),
        what: "no load of g through %fs in runtime.stackcheck or runtime.systemstack that this \
               reads: the thread-local slot of g is not known, so goroutines cannot be followed"
            .into(),
    })
}

/// The file offset of virtual address `addr` (in a section with file contents).
fn file_offset_of(elf: &object::File, addr: u64) -> Option<u64> {
    elf.sections().find_map(|s| {
        let (start, size) = s.file_range()?;
        let off = addr.checked_sub(s.address())?;
        (off < size.min(s.size())).then(|| start + off)
    })
}

/// Where each scheduling point is probed. Entry points go after the stack-check prologue (or at
/// a first `push %rbp` of a function without one); the creation of a goroutine is probed just
/// after `runtime.newproc`'s closure calls `runtime.newproc1`, where RAX holds the new `g`.
fn probe_sites(elf: &object::File, functions: &[GoFunction]) -> (Vec<GoProbeSite>, Vec<String>) {
    let (mut sites, mut missing) = (Vec::new(), Vec::new());
    let site = |point, f: &GoFunction, address: u64| {
        file_offset_of(elf, address).map(|file_offset| GoProbeSite {
            point,
            function: f.name.clone(),
            address,
            file_offset,
        })
    };
    for (point, name) in ENTRY_POINTS {
        let Some(f) = named(functions, name) else {
            // A point probed in one of two functions (by Go version) misses only without both.
            let alternative =
                ENTRY_POINTS.iter().any(|(p, n)| *p == point && *n != name && named(functions, n).is_some());
            if !alternative {
                missing.push(format!("{point}: no function {name}"));
            }
            continue;
        };
        let code = bytes_at(elf, f.entry, 16).unwrap_or_default();
        let offset = after_prologue(code).or((code.first() == Some(&0x55)).then_some(0));
        match offset.and_then(|o| site(point, f, f.entry + o)) {
            Some(s) => sites.push(s),
            None => missing.push(format!("{point}: {name} does not start with the stack-check prologue")),
        }
    }
    let newproc1 = named(functions, "runtime.newproc1").map(|f| f.entry);
    let closure = functions.iter().position(|f| f.name == "runtime.newproc.func1");
    let after_call = newproc1.zip(closure).and_then(|(target, i)| {
        let f = &functions[i];
        direct_calls(elf, functions, i, 512)
            .find(|(_, callee)| callee.entry == target)
            .and_then(|(returns_to, _)| site("newproc", f, returns_to))
    });
    match after_call {
        Some(s) => sites.push(s),
        None => missing.push("newproc: no call of runtime.newproc1 in runtime.newproc.func1".into()),
    }
    (sites, missing)
}

/// For every `go` statement wrapper, the first function it calls (a `call rel32` whose target is
/// a function's entry, the stack-growth call excepted).
fn go_wrappers(elf: &object::File, functions: &[GoFunction]) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for (i, f) in functions.iter().enumerate() {
        if !f.name.contains(".gowrap") {
            continue;
        }
        // Outside the runtime, a wrapper's calls into it copy arguments or block (a
        // `go func() { <-c }()` inlined): the goroutine's function is the first other one.
        let runtime_wrapper = f.name.starts_with("runtime.");
        let target = direct_calls(elf, functions, i, 256).find(|(_, callee)| {
            !callee.name.starts_with("runtime.morestack")
                && (runtime_wrapper || !callee.name.starts_with("runtime."))
        });
        if let Some((_, callee)) = target {
            out.insert(f.entry, callee.name.clone());
        }
    }
    out
}

/// The `call rel32` instructions in the first `limit` bytes of function `functions[i]` whose
/// target is a function's entry: (the address the call returns to, the function called). A byte
/// pattern, not a disassembly: the exact-entry check keeps stray `e8` bytes out.
fn direct_calls<'a>(
    elf: &object::File<'a>,
    functions: &'a [GoFunction],
    i: usize,
    limit: u64,
) -> impl Iterator<Item = (u64, &'a GoFunction)> {
    let f = &functions[i];
    let end = functions.get(i + 1).map_or(f.entry + limit, |n| n.entry).min(f.entry + limit);
    let code = bytes_at(elf, f.entry, end.saturating_sub(f.entry)).unwrap_or_default();
    code.windows(5).enumerate().filter_map(move |(at, w)| {
        if w[0] != 0xe8 {
            return None;
        }
        let rel = i64::from(i32::from_le_bytes([w[1], w[2], w[3], w[4]]));
        let returns_to = f.entry.checked_add(at as u64 + 5)?;
        let target = returns_to.checked_add_signed(rel)?;
        let callee =
            functions.binary_search_by_key(&target, |g| g.entry).ok().and_then(|j| functions.get(j))?;
        Some((returns_to, callee))
    })
}

/// The function named `name`.
fn named<'a>(functions: &'a [GoFunction], name: &str) -> Option<&'a GoFunction> {
    functions.iter().find(|f| f.name == name)
}

/// Whether an ELF file has the sections every Go program has.
fn has_go_sections<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>) -> bool {
    elf.section_by_name(".go.buildinfo").is_some() || elf.section_by_name(".gopclntab").is_some()
}

/// Up to `len` bytes of the file's image at virtual address `addr`.
fn bytes_at<'a>(elf: &object::File<'a>, addr: u64, len: u64) -> Option<&'a [u8]> {
    elf.sections().find_map(|s| {
        let start = addr.checked_sub(s.address())?;
        if start >= s.size() {
            return None;
        }
        let data = s.data().ok()?;
        let start = usize::try_from(start).ok()?;
        let end = start.saturating_add(usize::try_from(len).ok()?).min(data.len());
        data.get(start..end)
    })
}

/// Where the first load of `g` through `%fs` in `code` reads, as the Go linker writes it:
/// - `mov %fs:disp32, r64` (`64 REX.W 8b ModRM SIB disp32`, ModRM mod = 00 r/m = 100, SIB = 0x25:
///   no base, no index), in executables linked by Go itself;
/// - `mov $imm32, r64` then `mov %fs:(r64), r64` (`REX.W c7 c0+r imm32`, then `64 REX.W 8b` with
///   ModRM mod = 00 and r/m = that register), in position-independent builds.
pub fn fs_displacement(code: &[u8]) -> Option<i64> {
    let rex_w = |b: u8| b & 0xf8 == 0x48;
    let direct = code.windows(9).find_map(|w| {
        (w[0] == 0x64 && rex_w(w[1]) && w[1] & 1 == 0 && w[2] == 0x8b && w[3] & 0xc7 == 0x04 && w[4] == 0x25)
            .then(|| i64::from(i32::from_le_bytes([w[5], w[6], w[7], w[8]])))
    });
    let via_register = || {
        code.windows(11).find_map(|w| {
            // mov $imm32, r: REX.W (B selects r8–r15) c7, ModRM 11 000 rrr.
            let (rex, modrm) = (w[0], w[2]);
            if !(rex_w(rex) && w[1] == 0xc7 && modrm & 0xf8 == 0xc0) {
                return None;
            }
            let reg = (modrm & 7) | ((rex & 1) << 3);
            let imm = i64::from(i32::from_le_bytes([w[3], w[4], w[5], w[6]]));
            // mov %fs:(r), r': 64 REX.W (B: r's high bit) 8b, ModRM 00 xxx rrr (no SIB, no RIP).
            let (rex2, modrm2) = (w[8], w[10]);
            let base = (modrm2 & 7) | ((rex2 & 1) << 3);
            (w[7] == 0x64
                && rex_w(rex2)
                && w[9] == 0x8b
                && modrm2 & 0xc0 == 0
                && !matches!(modrm2 & 7, 4 | 5)
                && base == reg)
                .then_some(imm)
        })
    };
    direct.or_else(via_register)
}

/// Where a uprobe on the Go function at `entry` goes: past the stack-check prologue
/// (`cmp 0x10(%r14),%rsp`, or for a large frame `lea -N(%rsp),%r12; cmp 0x10|0x18(%r14),%r12`,
/// then `jbe`), at the `push %rbp` that follows. A probe on the first instruction would be
/// single-stepped out of line at every hit (8–13 µs here against ~0.6 µs). `None` when the
/// function does not start that way (it is not probed).
pub fn after_prologue(code: &[u8]) -> Option<u64> {
    // lea disp8(%rsp),%r12 | lea disp32(%rsp),%r12
    let lea = match code.get(..3)? {
        [0x4c, 0x8d, 0x64] if code.get(3) == Some(&0x24) => 5,
        [0x4c, 0x8d, 0xa4] if code.get(3) == Some(&0x24) => 8,
        _ => 0,
    };
    let cmp = code.get(lea..lea + 4)?;
    let guard = cmp[3] == 0x10 || cmp[3] == 0x18;
    if !((cmp[0] == 0x49 || cmp[0] == 0x4d) && cmp[1] == 0x3b && cmp[2] == 0x66 && guard) {
        return None;
    }
    let at = lea + 4;
    let jump = match code.get(at..at + 2)? {
        [0x0f, 0x86] => 6,
        [0x76, _] => 2,
        _ => return None,
    };
    (code.get(at + jump) == Some(&0x55)).then_some((at + jump) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_the_runtime_prints_them() {
        let v = GoVersion::parse("go1.23.9").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 23, 9));
        let v = GoVersion::parse("go1.24rc1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 24, 0));
        let v = GoVersion::parse("devel go1.25-abcdef").unwrap();
        assert_eq!((v.major, v.minor), (1, 25));
        assert!(GoVersion::parse("rust1.2").is_none());
        assert!(GoVersion::parse("go").is_none());
    }

    #[test]
    fn decodes_the_tls_load_and_the_prologue() {
        // mov %fs:0xfffffffffffffff8,%rax ; mov %fs:0xfffffffffffffff0,%r14
        assert_eq!(fs_displacement(&[0x90, 0x64, 0x48, 0x8b, 0x04, 0x25, 0xf8, 0xff, 0xff, 0xff]), Some(-8));
        assert_eq!(fs_displacement(&[0x64, 0x4c, 0x8b, 0x34, 0x25, 0xf0, 0xff, 0xff, 0xff]), Some(-16));
        // A store to %fs (89), or a memory operand with a base register, is not the load.
        assert_eq!(fs_displacement(&[0x64, 0x4c, 0x89, 0x34, 0x25, 0xf8, 0xff, 0xff, 0xff]), None);
        assert_eq!(fs_displacement(&[0x64, 0x48, 0x8b, 0x01, 0x25, 0xf8, 0xff, 0xff, 0xff]), None);
        assert_eq!(fs_displacement(&[0x64, 0x48]), None);
        // PIE: mov $0xfffffffffffffff8,%rcx ; mov %fs:(%rcx),%rax
        let pie = [0x48, 0xc7, 0xc1, 0xf8, 0xff, 0xff, 0xff, 0x64, 0x48, 0x8b, 0x01, 0x48];
        assert_eq!(fs_displacement(&pie), Some(-8));
        // ... but not through another register than the one loaded.
        let other = [0x48, 0xc7, 0xc1, 0xf8, 0xff, 0xff, 0xff, 0x64, 0x48, 0x8b, 0x02, 0x48];
        assert_eq!(fs_displacement(&other), None);

        let long = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x88, 0x01, 0x00, 0x00, 0x55, 0x48];
        assert_eq!(after_prologue(&long), Some(10));
        let short = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55];
        assert_eq!(after_prologue(&short), Some(6));
        assert_eq!(after_prologue(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x48]), None);
        // A large frame: lea -0x18(%rsp),%r12 ; cmp 0x18(%r14),%r12 ; jbe rel32 ; push %rbp
        let large =
            [0x4c, 0x8d, 0x64, 0x24, 0xe8, 0x4d, 0x3b, 0x66, 0x18, 0x0f, 0x86, 0x0e, 0x04, 0, 0, 0x55];
        assert_eq!(after_prologue(&large), Some(15));
        assert_eq!(after_prologue(&[0x55, 0x48, 0x89, 0xe5]), None);
        assert_eq!(after_prologue(&[0x49, 0x3b]), None);
    }

    #[test]
    fn other_files_are_not_go_programs() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        assert!(matches!(GoBinary::parse("self", &data), Ok(None)));
        assert!(matches!(GoBinary::parse("junk", b"\x7fELF junk"), Err(GoError::NotElf(..))));
        assert!(matches!(GoBinary::open(Path::new("/no/such/file")), Err(GoError::Io { .. })));
    }
}
