//! The Go runtime adapter of the recorder: finds Go programs among the traced processes, tells
//! the probes how to read which goroutine each of their threads runs (the identity level), and
//! names the functions goroutines start with. What reaches the trace are user-task records of
//! the model every runtime uses (a probe-table entry `go:goroutine`), plus a `GO` table.

use std::{collections::HashMap, path::Path, sync::Arc};

use rustc_hash::FxHashSet;

use sched_trace_abi::{GoIdentity, go_identity_arg};
use sched_trace_binaries::go::{GoBinary, GoError, LayoutSource, ON_REQUEST_POINTS};

use crate::trace::{
    UserProbe,
    format::{GoChunk, GoProcess},
};

/// How much of a Go program's scheduling is followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GoLevel {
    /// Not at all: its threads only.
    Off,
    /// Which goroutine each thread runs, read at every switch-out and CPU sample (no uprobe).
    #[default]
    Identity,
    /// The runtime's scheduler itself, with uprobes after the stack-check prologue of
    /// `execute`, `gopark` (with the wait reason), `ready`, `goroutineReady`, `goexit0`,
    /// `goschedImpl` and `preemptPark`, and after `newproc1` returns: every run, park, yield,
    /// preemption, wake-up, creation and exit of a goroutine. With `--go-casgstatus`, also
    /// `casgstatus`: every status change, so the goroutines' system calls too.
    Full,
}

/// The probe-table entry of the goroutine records.
pub const PROVIDER: &str = "go";
pub const GOROUTINE_PROBE: &str = "goroutine";

/// One Go process the probes follow.
struct Followed {
    binary: Arc<GoBinary>,
    /// Run-time address − link-time address (position-independent builds), once known.
    bias: Option<u64>,
    info: GoProcess,
}

/// The Go processes of a recording.
#[derive(Default)]
pub struct GoPrograms {
    followed: HashMap<u32, Followed>,
    /// Probe indexes of the goroutine records (one per process).
    /// (Fx-hashed: they are looked up for every user-task record the recorder drains.)
    probes: FxHashSet<u32>,
    /// Start pcs seen in the records and not yet named.
    unnamed: FxHashSet<(u32, u64)>,
    named: FxHashSet<(u32, u64)>,
}

/// What `inspect` found in a traced executable.
pub enum Inspected {
    NotGo,
    /// A Go program whose goroutines cannot be followed (said why), traced as threads.
    Unsupported(Box<GoProcess>),
    Go(Arc<GoBinary>),
}

/// Reads the executable at `path` (the command, or `/proc/PID/exe`).
pub fn inspect(pid: u32, path: &Path) -> Inspected {
    match GoBinary::open(path) {
        Ok(None) | Err(GoError::NotElf(..)) | Err(GoError::Io { .. }) => Inspected::NotGo,
        Ok(Some(b)) => Inspected::Go(Arc::new(b)),
        Err(e) => {
            eprintln!("sched-trace: PID {pid}: {e}");
            Inspected::Unsupported(Box::new(GoProcess {
                pid,
                binary: path.display().to_string(),
                level: "off".into(),
                problem: Some(e.to_string()),
                ..Default::default()
            }))
        }
    }
}

impl GoPrograms {
    /// Follows the goroutines of process `pid`, running `binary`, at `level`: at the identity
    /// level, its probe-table entry (index `probe_index`) and the layout the probes read it
    /// with (`fsbase_known`: the kernel exposes the thread pointer). At the full level nothing
    /// is returned: the scheduler's probes ([`full_probes`]) are attached instead, and those
    /// whose records carry start pcs are named with [`Self::names_start_pcs_of`].
    pub fn follow_at(
        &mut self,
        pid: u32,
        binary: Arc<GoBinary>,
        probe_index: u32,
        fsbase_known: bool,
        level: GoLevel,
    ) -> Option<(UserProbe, GoIdentity)> {
        let l = &binary.layout;
        let mut info = GoProcess {
            pid,
            binary: binary.path.clone(),
            go_version: binary.version.text.clone(),
            main_path: binary.main_path.clone(),
            main_module: binary.main_module.clone(),
            build_settings: binary.settings.clone(),
            level: "identity".into(),
            problem: None,
            layout_source: match binary.layout_source {
                LayoutSource::Dwarf => "dwarf".into(),
                LayoutSource::Table => "table".into(),
            },
            probe: Some(probe_index),
            gomaxprocs: None,
            cpus_allowed: None,
            statuses: l.statuses_by_value(),
            wait_reasons: l.wait_reasons.clone(),
        };
        // A position-dependent image is where it was linked; another's bias is read later.
        let bias = (!binary.position_independent).then_some(0);
        if level == GoLevel::Full || !fsbase_known {
            info.probe = None;
            if level == GoLevel::Full {
                info.level = "full".into();
            } else {
                info.level = "off".into();
                info.problem = Some("this kernel's BTF has no task_struct.thread.fsbase".into());
            }
            self.followed.insert(pid, Followed { binary, bias, info });
            return None;
        }
        let identity = GoIdentity {
            tls_g: binary.tls_g_offset,
            g_m: l.g_m,
            g_goid: l.g_goid,
            g_atomicstatus: l.g_atomicstatus,
            g_waitreason: l.g_waitreason,
            g_startpc: l.g_startpc,
            m_curg: l.m_curg,
            probe: probe_index,
            _pad: 0,
        };
        let probe = UserProbe {
            index: probe_index,
            binary: binary.path.clone(),
            provider: PROVIDER.into(),
            name: GOROUTINE_PROBE.into(),
            file_offset: 0,
            args: "goid startpc status waitreason on_system_stack".into(),
            // The statuses by name: the correlation tells a goroutine in a system call by them.
            reasons: l.statuses_by_value(),
        };
        self.probes.insert(probe_index);
        self.followed.insert(pid, Followed { binary, bias, info });
        Some((probe, identity))
    }

    /// Whether process `pid` is followed already, running the executable at `path`.
    pub fn follows(&self, pid: u32, path: &Path) -> bool {
        let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        self.followed.get(&pid).is_some_and(|f| same(Path::new(&f.binary.path), path))
    }

    /// Records of the probe `index` carry a goroutine's start pc as their second argument.
    pub fn names_start_pcs_of(&mut self, index: u32) {
        self.probes.insert(index);
    }

    /// Notes a drained record (cheap: called for every user-task record).
    pub fn saw(&mut self, pid: u32, probe: u32, args: &[u64]) {
        if !self.probes.contains(&probe) {
            return;
        }
        let pc = args.get(go_identity_arg::STARTPC).copied().unwrap_or(0);
        if pc != 0 && !self.named.contains(&(pid, pc)) {
            self.unnamed.insert((pid, pc));
        }
    }

    /// Checks the layout on the live process (once it runs Go code) and reads `runtime.gomaxprocs`.
    /// Returns an error message when the layout does not fit: the caller stops following it.
    pub fn check_live(&mut self, pid: u32) -> Option<Result<(), String>> {
        let f = self.followed.get_mut(&pid)?;
        if f.info.level != "identity" && f.info.level != "full" {
            return None;
        }
        if f.bias.is_none() {
            f.bias = load_bias(pid, &f.binary);
        }
        let bias = f.bias?;
        f.info.cpus_allowed = super::procfs::cpus_allowed(pid).map(|c| c.len() as u32);
        let mem = ProcessMemory::open(pid).ok()?;
        if let Some(&addr) = f.binary.globals.get("runtime.gomaxprocs") {
            f.info.gomaxprocs = mem.read_u32(addr.wrapping_add(bias)).filter(|&n| n > 0 && n <= 1 << 16);
        }
        // The main goroutine is allgs[0] (`allgs` is a slice: array, len, cap), goid 1; its
        // status is a known one.
        let Some(&allgs) = f.binary.globals.get("runtime.allgs") else { return Some(Ok(())) };
        let array = mem.read_u64(allgs.wrapping_add(bias)).filter(|&p| p != 0);
        let Some(g) = array.and_then(|a| mem.read_u64(a)).filter(|&g| g != 0) else { return Some(Ok(())) };
        let l = &f.binary.layout;
        let goid = mem.read_u64(g + u64::from(l.g_goid));
        let status = mem.read_u32(g + u64::from(l.g_atomicstatus)).map(|s| u64::from(s) & !0x1000);
        let known = status.is_some_and(|s| f.info.statuses.contains_key(&s));
        if goid == Some(1) && known {
            return Some(Ok(()));
        }
        let why = format!(
            "the runtime layout of {} does not fit the running process (main goroutine: goid \
             {goid:?}, status {status:?}): goroutines are not followed",
            f.binary.version.text
        );
        f.info.level = "off".into();
        f.info.problem = Some(why.clone());
        Some(Err(why))
    }

    /// The processes and the names of the start pcs seen since the last call, for the `GO`
    /// table (`None`: nothing new). `all`: every process, not only those with news.
    pub fn table(&mut self, all: bool) -> Option<GoChunk> {
        let mut chunk = GoChunk::default();
        for (pid, pc) in std::mem::take(&mut self.unnamed) {
            let Some(f) = self.followed.get_mut(&pid) else { continue };
            if f.bias.is_none() {
                f.bias = load_bias(pid, &f.binary);
            }
            let Some(bias) = f.bias else {
                self.unnamed.insert((pid, pc));
                continue;
            };
            if let Some(name) = f.binary.start_function(pc.wrapping_sub(bias)) {
                chunk.start_functions.push((pid, pc, name.to_string()));
            }
            self.named.insert((pid, pc));
        }
        if all {
            chunk.processes = self.followed.values().map(|f| f.info.clone()).collect();
            chunk.processes.sort_by_key(|p| p.pid);
        }
        (!chunk.processes.is_empty() || !chunk.start_functions.is_empty()).then_some(chunk)
    }

    /// Records an unsupported Go program (described by `inspect`).
    pub fn unsupported(&mut self, info: Box<GoProcess>) -> GoChunk {
        GoChunk { processes: vec![*info], start_functions: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.followed.is_empty()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.followed.keys().copied().collect()
    }
}

/// One argument of a full-level probe: register `reg` (a `pt_regs` field), then a load at each
/// displacement of `loads` in turn (none: the register itself), the last one `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoArg {
    pub reg: &'static str,
    pub loads: Vec<u32>,
    pub size: i32,
}

impl GoArg {
    fn new(reg: &'static str, loads: &[u32], size: i32) -> GoArg {
        GoArg { reg, loads: loads.to_vec(), size }
    }

    /// As the probe table shows it: `*(*(%r14+48)+184)`.
    fn describe(&self) -> String {
        self.loads.iter().fold(format!("%{}", self.reg), |acc, d| format!("*({acc}+{d})"))
    }

    /// How the kernel reads it, with `offset_of` a `pt_regs` field's offset.
    pub fn kernel_arg(&self, offset_of: impl Fn(&str) -> Option<u32>) -> Option<sched_trace_abi::UsdtArg> {
        use sched_trace_abi::usdt_arg;
        let reg_off = offset_of(self.reg)?;
        let mut a = sched_trace_abi::UsdtArg { size: self.size, reg_off, ..Default::default() };
        let d16 = |d: u32| u16::try_from(d).ok().filter(|&d| d != usdt_arg::CHAIN_END);
        match self.loads.as_slice() {
            [] => a.kind = usdt_arg::REG,
            [d] => (a.kind, a.value) = (usdt_arg::REG_DEREF, i64::from(*d)),
            [d, rest @ ..] if rest.len() <= 2 => {
                a.kind = usdt_arg::REG_DEREF_CHAIN;
                a.value = i64::from(*d);
                a.then = [usdt_arg::CHAIN_END; 2];
                for (slot, d) in a.then.iter_mut().zip(rest) {
                    *slot = d16(*d)?;
                }
            }
            _ => return None,
        }
        Some(a)
    }
}

/// Whether the full level attaches probe point `point` (those only on request with
/// `casgstatus`).
fn wanted(point: &str, casgstatus: bool) -> bool {
    casgstatus || !ON_REQUEST_POINTS.contains(&point)
}

/// Why the full level's probe points that `binary` lacks are missing (those it would attach).
pub fn missing_sites(binary: &GoBinary, casgstatus: bool) -> impl Iterator<Item = &String> {
    binary.missing_sites.iter().filter(move |why| {
        let point = why.split(':').next().unwrap_or_default();
        wanted(point, casgstatus)
    })
}

/// The probes of the full level for `binary` (indexes to be assigned), with how each reads its
/// arguments: one per scheduling point found in it, the goroutine's id first; `casgstatus` only
/// when asked for.
pub fn full_probes(binary: &GoBinary, casgstatus: bool) -> Vec<(UserProbe, Vec<GoArg>)> {
    let l = &binary.layout;
    let (goid, startpc) = (l.g_goid, l.g_startpc);
    binary
        .probe_sites
        .iter()
        .filter(|site| wanted(site.point, casgstatus))
        .filter_map(|site| {
            let args = match site.point {
                // execute(gp, …) and the new g newproc1 returns: RAX.
                "execute" | "newproc" => vec![GoArg::new("ax", &[goid], 8), GoArg::new("ax", &[startpc], 8)],
                // gopark(unlockf, lock, reason, …): the parking goroutine is the current g (R14).
                "gopark" => vec![GoArg::new("r14", &[goid], 8), GoArg::new("cx", &[], 1)],
                // ready(gp, …) runs on the system stack: the waker is g0.m.curg.
                "ready" => vec![GoArg::new("ax", &[goid], 8), GoArg::new("r14", &[l.g_m, l.m_curg, goid], 8)],
                "goexit" | "gosched" | "preempt_park" => vec![GoArg::new("ax", &[goid], 8)],
                // goroutineReady(arg any, …): the `any`'s data word, RBX, is the *g.
                "goroutine_ready" => vec![GoArg::new("bx", &[goid], 8)],
                // netpollready(toRun, pd, mode): the goroutines parked on pd for reading and
                // for writing (pd.rg / pd.wg hold a *g while one waits), and the mode.
                "netpollready" => vec![
                    GoArg::new("bx", &[l.polldesc_rg, goid], 8),
                    GoArg::new("bx", &[l.polldesc_wg, goid], 8),
                    GoArg::new("cx", &[], 4),
                ],
                // stopTheWorldWithSema(reason stwReason): AL.
                "stw_stop" => vec![GoArg::new("ax", &[], 1)],
                "stw_start" => Vec::new(),
                // A system call's entry and exit, on the goroutine's own stack (R14)...
                "syscall_enter" | "syscall_enter_block" | "syscall_exit" => {
                    vec![GoArg::new("r14", &[goid], 8)]
                }
                // ...and its slow path, on g0 with the goroutine in RAX.
                "syscall_exit_no_p" => vec![GoArg::new("ax", &[goid], 8)],
                // casgstatus(gp, oldval, newval uint32): RAX, EBX, ECX.
                "casgstatus" => {
                    vec![GoArg::new("ax", &[goid], 8), GoArg::new("bx", &[], 4), GoArg::new("cx", &[], 4)]
                }
                _ => return None,
            };
            let probe = UserProbe {
                index: 0,
                binary: binary.path.clone(),
                provider: PROVIDER.into(),
                name: site.point.into(),
                file_offset: site.file_offset,
                args: args.iter().map(GoArg::describe).collect::<Vec<_>>().join(" "),
                reasons: match site.point {
                    "gopark" => l.wait_reasons.clone(),
                    "stw_stop" => l.stw_reasons.clone(),
                    "casgstatus" => l.statuses_by_value(),
                    _ => Default::default(),
                },
            };
            Some((probe, args))
        })
        .collect()
}

/// Where process `pid` mapped `binary`'s first page, less that page's link-time address
/// (position-independent builds move by this much).
fn load_bias(pid: u32, binary: &GoBinary) -> Option<u64> {
    let exe = std::fs::canonicalize(&binary.path).ok()?;
    let first =
        super::mappings::read_maps(pid)?.into_iter().find(|m| m.offset == 0 && Path::new(&m.path) == exe)?;
    Some(first.start.wrapping_sub(binary.image_base))
}

/// Reads another process's memory (`/proc/PID/mem`, root).
struct ProcessMemory(std::fs::File);

impl ProcessMemory {
    fn open(pid: u32) -> std::io::Result<Self> {
        std::fs::File::open(format!("/proc/{pid}/mem")).map(ProcessMemory)
    }

    fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        std::os::unix::fs::FileExt::read_exact_at(&self.0, &mut buf, addr).ok()?;
        Some(buf)
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        self.read::<8>(addr).map(u64::from_le_bytes)
    }

    fn read_u32(&self, addr: u64) -> Option<u32> {
        self.read::<4>(addr).map(u32::from_le_bytes)
    }
}
