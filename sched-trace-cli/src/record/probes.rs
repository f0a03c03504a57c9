//! Loading and attaching the kernel programs (aya).
//!
//! Every failure names the program and attach point involved and keeps the kernel's verifier log
//! (aya's `ProgramError::LoadError` carries it). Links live in the [`Probes`] value: dropping it
//! detaches everything, on every exit path.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::StackTraceMap,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use sched_trace_abi::{MAX_USDT_PROBES, UsdtSpec, names};

use super::{
    RecordError,
    kernel_btf::{CgroupOffsets, TaskOffsets},
};
use crate::trace::DropCounters;

/// The kernel programs' object, built by `build.rs` from `ebpf-probes/kernel`.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SCHED_TRACE_PROBES_OBJ"));

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
enum AttachPoint {
    /// A BTF tracepoint (`tp_btf`): arguments are the tracepoint's prototype, typed by the
    /// kernel's BTF.
    Btf(&'static str),
    /// A tracefs tracepoint `category/name`.
    Tracefs(&'static str, &'static str),
}

/// Every program in the object and where it attaches. Process lifecycle first, so that children
/// are followed from the first moment.
const PROGRAMS: &[(&str, AttachPoint)] = &[
    ("sched_process_fork", AttachPoint::Btf("sched_process_fork")),
    ("cgroup_attach_task", AttachPoint::Btf("cgroup_attach_task")),
    ("sched_process_exec", AttachPoint::Btf("sched_process_exec")),
    ("sched_process_exit", AttachPoint::Btf("sched_process_exit")),
    ("task_rename", AttachPoint::Btf("task_rename")),
    ("sched_switch", AttachPoint::Btf("sched_switch")),
    ("sched_waking", AttachPoint::Btf("sched_waking")),
    ("sched_wakeup", AttachPoint::Btf("sched_wakeup")),
    ("sched_wakeup_new", AttachPoint::Btf("sched_wakeup_new")),
    ("sched_migrate_task", AttachPoint::Btf("sched_migrate_task")),
    ("sys_enter_epoll_wait", AttachPoint::Tracefs("syscalls", "sys_enter_epoll_wait")),
    ("sys_enter_epoll_pwait", AttachPoint::Tracefs("syscalls", "sys_enter_epoll_pwait")),
    ("sys_enter_epoll_pwait2", AttachPoint::Tracefs("syscalls", "sys_enter_epoll_pwait2")),
    ("sys_exit_epoll_wait", AttachPoint::Tracefs("syscalls", "sys_exit_epoll_wait")),
    ("sys_exit_epoll_pwait", AttachPoint::Tracefs("syscalls", "sys_exit_epoll_pwait")),
    ("sys_exit_epoll_pwait2", AttachPoint::Tracefs("syscalls", "sys_exit_epoll_pwait2")),
    // Idle unless stacks are recorded (TRACK_MMAP).
    ("sys_enter_mmap", AttachPoint::Tracefs("syscalls", "sys_enter_mmap")),
    ("sys_exit_mmap", AttachPoint::Tracefs("syscalls", "sys_exit_mmap")),
];

/// The program every USDT probe attaches (with its index as the attach cookie).
const USDT_PROGRAM: &str = "usdt";
/// The program the CPU-clock perf events run.
const SAMPLE_PROGRAM: &str = "cpu_sample";

/// The raw tracepoint prototypes the programs read (after the context pointer).
pub const RAW_TRACEPOINT_PROTOTYPES: &[(&str, &[&str])] = &[
    ("sched_switch", &["bool", "struct task_struct *", "struct task_struct *", "unsigned int"]),
    ("sched_waking", &["struct task_struct *"]),
    ("sched_wakeup", &["struct task_struct *"]),
    ("sched_wakeup_new", &["struct task_struct *"]),
    ("sched_migrate_task", &["struct task_struct *", "int"]),
    ("sched_process_fork", &["struct task_struct *", "struct task_struct *"]),
    ("sched_process_exec", &["struct task_struct *", "pid_t"]),
    ("sched_process_exit", &["struct task_struct *", "bool"]),
    ("task_rename", &["struct task_struct *", "char *"]),
    ("cgroup_attach_task", &["struct cgroup *", "char *", "struct task_struct *", "bool"]),
];

/// Field offsets of the epoll syscall tracepoints (identical for the three wait calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollOffsets {
    pub epfd: u32,
    pub maxevents: u32,
    pub timeout: u32,
    pub ret: u32,
}

/// Field offsets of the mmap syscall tracepoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapOffsets {
    pub len: u32,
    pub prot: u32,
    pub ret: u32,
}

/// Everything the programs are configured with before loading.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Trace only the processes added with [`Probes::trace_pid`].
    pub filter_pids: bool,
    /// Add child processes of traced processes to the filter.
    pub follow_children: bool,
    /// Trace the processes of the cgroups added with [`Probes::trace_cgroup`] (and of their
    /// descendants): the probes add them to the pid filter as they are created or moved in.
    pub filter_cgroups: bool,
    /// The way from a task to its cgroups (`None`: cgroups are not recorded).
    pub cgroups: Option<CgroupOffsets>,
    /// `cfs_rq.throttle_count` (`None`: throttled switch-outs are not told apart).
    pub throttle_count: Option<u32>,
    /// The recorder's own process, never traced.
    pub self_pid: u32,
    pub ring_buffer_bytes: u32,
    pub filter_table_entries: u32,
    pub task: TaskOffsets,
    /// Offsets of `pt_regs.orig_ax` and `pt_regs.ip`, if known.
    pub orig_ax: Option<u32>,
    pub ip: Option<u32>,
    /// `sizeof(struct pt_regs)`, if known.
    pub pt_regs_size: Option<u32>,
    pub epoll: EpollOffsets,
    pub mmap: MmapOffsets,
    pub stacks: StackOptions,
}

/// Which stacks the programs capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackOptions {
    /// Sample every CPU's running traced thread this many times a second (`None`: no samples).
    pub oncpu_hz: Option<u64>,
    /// The stacks of every traced thread's switch-out.
    pub offcpu: bool,
    /// The waker's stacks at every wake-up of a traced thread.
    pub wakeup: bool,
    /// Entries of the stack map (distinct stacks it can hold).
    pub map_entries: u32,
}

impl StackOptions {
    pub const NONE: StackOptions =
        StackOptions { oncpu_hz: None, offcpu: false, wakeup: false, map_entries: 1 };

    pub fn any(&self) -> bool {
        self.oncpu_hz.is_some() || self.offcpu || self.wakeup
    }
}

/// Loaded (and, after [`Probes::attach_all`], attached) kernel programs.
pub struct Probes {
    bpf: Ebpf,
    /// The kernel exposes `task_struct.thread.fsbase` (goroutines can be read).
    fsbase_known: bool,
}

/// Every attach point, as `kind:name`: what a recording uses when `attach_all` succeeds.
pub fn attach_points() -> Vec<String> {
    PROGRAMS.iter().map(|(_, point)| point.label()).collect()
}

impl AttachPoint {
    fn label(self) -> String {
        match self {
            AttachPoint::Btf(tp) => format!("tp_btf:{tp}"),
            AttachPoint::Tracefs(cat, tp) => format!("tracepoint:{cat}:{tp}"),
        }
    }
}

impl Probes {
    /// Loads the object with `config` written into its globals and map sizes. Nothing is
    /// attached yet.
    pub fn load(config: &ProbeConfig) -> Result<Self, RecordError> {
        let none = u32::MAX;
        let filter_pids = config.filter_pids as u8;
        let follow = config.follow_children as u8;
        let cpu = config.task.cpu.unwrap_or(none);
        let vruntime = config.task.vruntime.unwrap_or(none);
        let weight = config.task.weight.unwrap_or(none);
        let cfs_rq = config.task.cfs_rq.unwrap_or(none);
        let stack = config.task.stack.unwrap_or(none);
        let fsbase = config.task.fsbase.unwrap_or(none);
        let c = config.cgroups;
        let cg = |f: fn(&CgroupOffsets) -> u32| c.as_ref().map_or(none, f);
        let (task_cgroups, dfl_cgrp, css_cpu, css_cpuset) = (
            cg(|c| c.task_cgroups),
            cg(|c| c.css_set_dfl_cgrp),
            cg(|c| c.css_set_cpu),
            cg(|c| c.css_set_cpuset),
        );
        let (css_cgroup, cgroup_kn, kn_id) =
            (cg(|c| c.css_cgroup), cg(|c| c.cgroup_kn), cg(|c| c.kernfs_node_id));
        let (cgroup_parent, cgroup_root, hierarchy_id) =
            (cg(|c| c.cgroup_parent), cg(|c| c.cgroup_root), cg(|c| c.root_hierarchy_id));
        let throttle_count = config.throttle_count.unwrap_or(none);
        let filter_cgroups = config.filter_cgroups as u8;
        let orig_ax = config.orig_ax.unwrap_or(none);
        let ip = config.ip.unwrap_or(none);
        let pt_regs_size = config.pt_regs_size.unwrap_or(0);
        // Wake the reader when an eighth of the ring buffer is waiting; it drains on a timer
        // anyway (see record::Session).
        let wakeup_bytes = (config.ring_buffer_bytes / 8) as u64;
        let (offcpu, wakeup) = (config.stacks.offcpu as u8, config.stacks.wakeup as u8);
        let bpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS_MAP, config.ring_buffer_bytes)
            .map_max_entries(names::STACKS_MAP, config.stacks.map_entries.max(1))
            .override_global("STACKS_OFFCPU", &offcpu, true)
            .override_global("STACKS_WAKEUP", &wakeup, true)
            .map_max_entries(names::TRACED_PIDS_MAP, config.filter_table_entries)
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("FOLLOW_CHILDREN", &follow, true)
            .override_global("SELF_PID", &config.self_pid, true)
            .override_global("TASK_PID", &config.task.pid, true)
            .override_global("TASK_TGID", &config.task.tgid, true)
            .override_global("TASK_PRIO", &config.task.prio, true)
            .override_global("TASK_COMM", &config.task.comm, true)
            .override_global("TASK_CPU", &cpu, true)
            .override_global("TASK_VRUNTIME", &vruntime, true)
            .override_global("TASK_WEIGHT", &weight, true)
            .override_global("TASK_CFS_RQ", &cfs_rq, true)
            .override_global("TASK_STACK", &stack, true)
            .override_global("TASK_FSBASE", &fsbase, true)
            .override_global("TASK_CGROUPS", &task_cgroups, true)
            .override_global("CSS_SET_DFL_CGRP", &dfl_cgrp, true)
            .override_global("CSS_SET_CPU", &css_cpu, true)
            .override_global("CSS_SET_CPUSET", &css_cpuset, true)
            .override_global("CSS_CGROUP", &css_cgroup, true)
            .override_global("CGROUP_KN", &cgroup_kn, true)
            .override_global("KERNFS_NODE_ID", &kn_id, true)
            .override_global("CGROUP_PARENT", &cgroup_parent, true)
            .override_global("CGROUP_ROOT", &cgroup_root, true)
            .override_global("CGROUP_ROOT_HIERARCHY_ID", &hierarchy_id, true)
            .override_global("CFS_RQ_THROTTLE_COUNT", &throttle_count, true)
            .override_global("FILTER_CGROUPS", &filter_cgroups, true)
            .override_global("PT_REGS_ORIG_AX", &orig_ax, true)
            .override_global("PT_REGS_IP", &ip, true)
            .override_global("PT_REGS_SIZE", &pt_regs_size, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("EPOLL_EPFD", &config.epoll.epfd, true)
            .override_global("EPOLL_MAXEVENTS", &config.epoll.maxevents, true)
            .override_global("EPOLL_TIMEOUT", &config.epoll.timeout, true)
            .override_global("EPOLL_RET", &config.epoll.ret, true)
            .override_global("TRACK_MMAP", &(config.stacks.any() as u8), true)
            .override_global("MMAP_LEN", &config.mmap.len, true)
            .override_global("MMAP_PROT", &config.mmap.prot, true)
            .override_global("MMAP_RET", &config.mmap.ret, true)
            .load(PROBES_OBJECT)
            .map_err(|e| RecordError::Probe {
                what: "loading the probes' object (maps and BTF)".into(),
                source: Box::new(e),
            })?;
        let mut probes = Probes { bpf, fsbase_known: config.task.fsbase.is_some() };
        probes.load_programs()?;
        Ok(probes)
    }

    fn load_programs(&mut self) -> Result<(), RecordError> {
        let btf = &aya::Btf::from_sys_fs().map_err(|e| RecordError::Probe {
            what: "reading the kernel's BTF for the tp_btf programs".into(),
            source: Box::new(e),
        })?;
        let usdt = self.bpf.program_mut(USDT_PROGRAM).ok_or_else(|| RecordError::Probe {
            what: format!("program {USDT_PROGRAM} is missing from the probes' object"),
            source: Box::new(ProgramError::NotLoaded),
        })?;
        <&mut UProbe>::try_from(usdt).and_then(|p| p.load()).map_err(|e| RecordError::Probe {
            what: format!("the kernel rejected program {USDT_PROGRAM}"),
            source: Box::new(e),
        })?;
        let sample = self.bpf.program_mut(SAMPLE_PROGRAM).ok_or_else(|| RecordError::Probe {
            what: format!("program {SAMPLE_PROGRAM} is missing from the probes' object"),
            source: Box::new(ProgramError::NotLoaded),
        })?;
        <&mut PerfEvent>::try_from(sample).and_then(|p| p.load()).map_err(|e| RecordError::Probe {
            what: format!("the kernel rejected program {SAMPLE_PROGRAM}"),
            source: Box::new(e),
        })?;
        for &(name, point) in PROGRAMS {
            let program = self.bpf.program_mut(name).ok_or_else(|| RecordError::Probe {
                what: format!("program {name} is missing from the probes' object"),
                source: Box::new(ProgramError::NotLoaded),
            })?;
            let result = match point {
                AttachPoint::Btf(tp) => <&mut BtfTracePoint>::try_from(program).and_then(|p| p.load(tp, btf)),
                AttachPoint::Tracefs(..) => <&mut TracePoint>::try_from(program).and_then(|p| p.load()),
            };
            result.map_err(|e| RecordError::Probe {
                what: format!("the kernel rejected program {name}"),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Adds process `pid` to the kernel-side filter.
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), RecordError> {
        let map =
            self.bpf.map_mut(names::TRACED_PIDS_MAP).ok_or_else(|| missing_map(names::TRACED_PIDS_MAP))?;
        let mut pids: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(map).map_err(|e| map_error(names::TRACED_PIDS_MAP, e))?;
        pids.insert(pid, 1, 0).map_err(|e| map_error(names::TRACED_PIDS_MAP, e))
    }

    /// Traces the processes of cgroup `key` and of its descendants (with `filter_cgroups`).
    pub fn trace_cgroup(&mut self, key: sched_trace_abi::CgroupKey) -> Result<(), RecordError> {
        let map = self
            .bpf
            .map_mut(names::CGROUP_FILTER_MAP)
            .ok_or_else(|| missing_map(names::CGROUP_FILTER_MAP))?;
        let mut cgroups: BpfHashMap<_, sched_trace_abi::CgroupKey, u8> =
            BpfHashMap::try_from(map).map_err(|e| map_error(names::CGROUP_FILTER_MAP, e))?;
        cgroups.insert(key, 1, 0).map_err(|e| map_error(names::CGROUP_FILTER_MAP, e))
    }

    /// Whether the probes can read goroutines on this kernel.
    pub fn fsbase_known(&self) -> bool {
        self.fsbase_known
    }

    /// Has the probes read which goroutine each thread of Go process `pid` runs.
    pub fn follow_goroutines(
        &mut self,
        pid: u32,
        layout: sched_trace_abi::GoIdentity,
    ) -> Result<(), RecordError> {
        self.go_procs()?.insert(pid, layout, 0).map_err(|e| map_error(names::GO_PROCS_MAP, e))
    }

    /// Stops reading the goroutines of process `pid` (its layout failed a check).
    pub fn forget_goroutines(&mut self, pid: u32) -> Result<(), RecordError> {
        match self.go_procs()?.remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error(names::GO_PROCS_MAP, e)),
        }
    }

    /// The map of Go processes whose goroutines the probes read.
    fn go_procs(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, u32, sched_trace_abi::GoIdentity>, RecordError> {
        let map = self.bpf.map_mut(names::GO_PROCS_MAP).ok_or_else(|| missing_map(names::GO_PROCS_MAP))?;
        BpfHashMap::try_from(map).map_err(|e| map_error(names::GO_PROCS_MAP, e))
    }

    /// Removes process `pid` from the kernel-side filter (after it exited).
    pub fn untrace_pid(&mut self, pid: u32) {
        if let Some(map) = self.bpf.map_mut(names::TRACED_PIDS_MAP)
            && let Ok(mut pids) = BpfHashMap::<_, u32, u8>::try_from(map)
        {
            let _ = pids.remove(&pid);
        }
    }

    /// Attaches every program. On error, what was attached stays attached until `self` is
    /// dropped.
    pub fn attach_all(&mut self) -> Result<(), RecordError> {
        for &(name, point) in PROGRAMS {
            let program = self.bpf.program_mut(name).ok_or_else(|| RecordError::Probe {
                what: format!("program {name} is missing from the probes' object"),
                source: Box::new(ProgramError::NotLoaded),
            })?;
            let result = match point {
                AttachPoint::Btf(_) => {
                    <&mut BtfTracePoint>::try_from(program).and_then(|p| p.attach().map(drop))
                }
                AttachPoint::Tracefs(cat, tp) => {
                    <&mut TracePoint>::try_from(program).and_then(|p| p.attach(cat, tp).map(drop))
                }
            };
            result.map_err(|e| RecordError::Probe {
                what: format!("attaching program {name} to {}", point.label()),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Samples every CPU of `cpus` on the software cpu-clock, `hz` times a second.
    pub fn attach_sampling(&mut self, cpus: &[u32], hz: u64) -> Result<(), RecordError> {
        let program = self.bpf.program_mut(SAMPLE_PROGRAM).ok_or_else(|| missing_map(SAMPLE_PROGRAM))?;
        let program = <&mut PerfEvent>::try_from(program).map_err(|e| RecordError::Probe {
            what: format!("program {SAMPLE_PROGRAM}"),
            source: Box::new(e),
        })?;
        for &cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(|e| RecordError::Probe {
                    what: format!("attaching the cpu-clock sampler at {hz} Hz on CPU {cpu}"),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Takes the stack map out (it outlives the programs: it is read once they are detached).
    pub fn take_stacks(&mut self) -> Result<StackTraceMap<MapData>, RecordError> {
        let map = self.bpf.take_map(names::STACKS_MAP).ok_or_else(|| missing_map(names::STACKS_MAP))?;
        StackTraceMap::try_from(map).map_err(|e| map_error(names::STACKS_MAP, e))
    }

    /// Attaches the USDT program to probe `index` of `binary` at `file_offset`, reading its
    /// arguments as `spec` says. It fires in any process running `binary` that the filter traces.
    pub fn attach_usdt(
        &mut self,
        index: u32,
        binary: &Path,
        file_offset: u64,
        spec: UsdtSpec,
        label: &str,
    ) -> Result<(), RecordError> {
        if index >= MAX_USDT_PROBES {
            return Err(RecordError::Probe {
                what: format!("too many USDT probes (at most {MAX_USDT_PROBES}); {label} is not attached"),
                source: Box::new(ProgramError::NotLoaded),
            });
        }
        let map =
            self.bpf.map_mut(names::USDT_SPECS_MAP).ok_or_else(|| missing_map(names::USDT_SPECS_MAP))?;
        let mut specs: Array<_, UsdtSpec> =
            Array::try_from(map).map_err(|e| map_error(names::USDT_SPECS_MAP, e))?;
        specs.set(index, spec, 0).map_err(|e| map_error(names::USDT_SPECS_MAP, e))?;
        let program = self.bpf.program_mut(USDT_PROGRAM).ok_or_else(|| missing_map(USDT_PROGRAM))?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: Some(index as u64),
        };
        <&mut UProbe>::try_from(program)
            .and_then(|p| p.attach(point, binary, UProbeScope::AllProcesses).map(drop))
            .map_err(|e| RecordError::Probe {
                what: format!(
                    "attaching to USDT probe {label} in {} at offset {file_offset:#x}",
                    binary.display()
                ),
                source: Box::new(e),
            })
    }

    /// Takes the ring buffer out (it outlives the programs, for the final drain).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, RecordError> {
        let map = self.bpf.take_map(names::EVENTS_MAP).ok_or_else(|| missing_map(names::EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|e| map_error(names::EVENTS_MAP, e))
    }

    /// Takes the kernel's counters out (they outlive the programs, for the final count).
    pub fn take_counters(&mut self) -> Result<KernelCounters, RecordError> {
        let mut take = |name: &'static str| -> Result<PerCpuArray<MapData, u64>, RecordError> {
            let map = self.bpf.take_map(name).ok_or_else(|| missing_map(name))?;
            PerCpuArray::try_from(map).map_err(|e| map_error(name, e))
        };
        Ok(KernelCounters { drops: take(names::DROPS_MAP)?, submitted: take(names::SUBMITTED_MAP)? })
    }
}

/// The kernel's per-CPU counters, per record kind: records that could not be reserved, and
/// records submitted.
pub struct KernelCounters {
    drops: PerCpuArray<MapData, u64>,
    submitted: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Per CPU, per slot: the records that could not be reserved.
    pub fn drops(&self) -> Result<Vec<Vec<u64>>, RecordError> {
        read_per_cpu(&self.drops, names::DROPS_MAP)
    }

    /// Per slot, all CPUs together: the records submitted.
    pub fn submitted(&self) -> Result<Vec<u64>, RecordError> {
        let per_cpu = read_per_cpu(&self.submitted, names::SUBMITTED_MAP)?;
        let mut total = vec![0u64; DropCounters::SLOTS];
        for cpu in per_cpu {
            for (t, v) in total.iter_mut().zip(cpu) {
                *t += v;
            }
        }
        Ok(total)
    }
}

fn read_per_cpu(array: &PerCpuArray<MapData, u64>, name: &str) -> Result<Vec<Vec<u64>>, RecordError> {
    let mut per_cpu: Vec<Vec<u64>> = Vec::new();
    for slot in 0..DropCounters::SLOTS as u32 {
        let values = array.get(&slot, 0).map_err(|e| map_error(name, e))?;
        for (cpu, v) in values.iter().enumerate() {
            if per_cpu.len() <= cpu {
                per_cpu.resize(cpu + 1, vec![0; DropCounters::SLOTS]);
            }
            per_cpu[cpu][slot as usize] = *v;
        }
    }
    Ok(per_cpu)
}

fn missing_map(name: &str) -> RecordError {
    RecordError::Probe {
        what: format!("map {name} is missing from the probes' object"),
        source: Box::new(ProgramError::NotLoaded),
    }
}

fn map_error(name: &str, e: aya::maps::MapError) -> RecordError {
    RecordError::Probe { what: format!("using map {name}"), source: Box::new(e) }
}
