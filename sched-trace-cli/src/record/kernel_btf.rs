//! What the running kernel's BTF says: `task_struct` field offsets for the probes, and the
//! prototypes of the raw tracepoints they read arguments from.
//!
//! Rust kernel programs cannot carry CO-RE relocations, so this is how the probes stay
//! independent of any one kernel build: offsets are looked up here at load time and written into
//! the programs' globals.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};

use super::RecordError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the `task_struct` fields the probes read; `None` when this kernel lacks one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub prio: u32,
    pub comm: u32,
    pub cpu: Option<u32>,
    pub vruntime: Option<u32>,
    pub weight: Option<u32>,
    /// `se.cfs_rq`: only with group scheduling (CONFIG_FAIR_GROUP_SCHED).
    pub cfs_rq: Option<u32>,
    /// `task_struct.stack`, the base of the kernel stack (tells interrupt context apart).
    pub stack: Option<u32>,
    /// `thread.fsbase`: the user-mode thread pointer (x86-64), which leads to a Go thread's `g`.
    pub fsbase: Option<u32>,
}

impl TaskOffsets {
    /// Names of the optional fields that were found.
    pub fn available(&self) -> Vec<String> {
        let mut v = vec!["pid".into(), "tgid".into(), "prio".into(), "comm".into()];
        for (name, off) in [
            ("cpu", self.cpu),
            ("se.vruntime", self.vruntime),
            ("se.load.weight", self.weight),
            ("se.cfs_rq", self.cfs_rq),
            ("stack", self.stack),
            ("thread.fsbase", self.fsbase),
        ] {
            if off.is_some() {
                v.push(name.to_string());
            }
        }
        v
    }
}

/// The way from a task to its cgroups and their ids (see the probes' `TASK_CGROUPS` and
/// neighbours), and whether a CFS group is throttled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupOffsets {
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    /// `css_set.subsys[cpu_cgrp_id]`, `css_set.subsys[cpuset_cgrp_id]`.
    pub css_set_cpu: u32,
    pub css_set_cpuset: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `cgroup.self.parent`.
    pub cgroup_parent: u32,
    pub cgroup_root: u32,
    pub root_hierarchy_id: u32,
}

/// The kernel's BTF, loaded once.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, RecordError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, RecordError> {
        let btf = Btf::from_file(path).map_err(|e| RecordError::Btf {
            what: format!(
                "cannot read the kernel's BTF from {} ({e}); sched-trace needs a kernel built \
                 with CONFIG_DEBUG_INFO_BTF=y",
                path.display()
            ),
        })?;
        Ok(KernelBtf { btf })
    }

    /// Offsets of the `task_struct` fields the probes use.
    pub fn task_offsets(&self) -> Result<TaskOffsets, RecordError> {
        let task = self.struct_named("task_struct")?;
        let required = |path: &str| {
            self.member_offset(&task, path).ok_or_else(|| RecordError::Btf {
                what: format!("task_struct has no field `{path}` in this kernel's BTF"),
            })
        };
        Ok(TaskOffsets {
            pid: required("pid")?,
            tgid: required("tgid")?,
            prio: required("prio")?,
            comm: required("comm")?,
            // task_cpu(): thread_info.cpu where thread_info lives in the task, else task->cpu.
            cpu: self.member_offset(&task, "thread_info.cpu").or_else(|| self.member_offset(&task, "cpu")),
            vruntime: self.member_offset(&task, "se.vruntime"),
            weight: self.member_offset(&task, "se.load.weight"),
            cfs_rq: self.member_offset(&task, "se.cfs_rq"),
            stack: self.member_offset(&task, "stack"),
            fsbase: self.member_offset(&task, "thread.fsbase"),
        })
    }

    /// Offsets of the cgroup structures the probes walk; `None` when one is missing (a kernel
    /// without cgroups, or one that changed them).
    pub fn cgroup_offsets(&self) -> Option<CgroupOffsets> {
        let field = |st: &str, path: &str| self.member_offset(&self.struct_named(st).ok()?, path);
        let subsys = field("css_set", "subsys")?;
        let controller = |name: &str| Some(subsys + 8 * self.enum_value("cgroup_subsys_id", name)?);
        Some(CgroupOffsets {
            task_cgroups: field("task_struct", "cgroups")?,
            css_set_dfl_cgrp: field("css_set", "dfl_cgrp")?,
            css_set_cpu: controller("cpu_cgrp_id")?,
            css_set_cpuset: controller("cpuset_cgrp_id")?,
            css_cgroup: field("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: field("cgroup", "kn")?,
            kernfs_node_id: field("kernfs_node", "id")?,
            cgroup_parent: field("cgroup", "self.parent")?,
            cgroup_root: field("cgroup", "root")?,
            root_hierarchy_id: field("cgroup_root", "hierarchy_id")?,
        })
    }

    /// `cfs_rq.throttle_count`: only with CPU bandwidth control (CONFIG_CFS_BANDWIDTH).
    pub fn cfs_rq_throttle_count(&self) -> Option<u32> {
        self.member_offset(&self.struct_named("cfs_rq").ok()?, "throttle_count")
    }

    /// The value of enumerator `name` of `enum enum_name`.
    fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        self.btf.resolve_types_by_name(enum_name).ok()?.into_iter().find_map(|t| match t {
            Type::Enum(e) => {
                e.members.iter().find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name)).map(|m| m.val())
            }
            _ => None,
        })
    }

    /// Offset of field `field` of `struct pt_regs` (for reading USDT operands from registers).
    pub fn pt_regs_offset(&self, field: &str) -> Result<u32, RecordError> {
        let regs = self.struct_named("pt_regs")?;
        self.member_offset(&regs, field)
            .ok_or_else(|| RecordError::Btf { what: format!("struct pt_regs has no field `{field}`") })
    }

    /// The size of `struct pt_regs`: a probe copies a task's registers in one read.
    pub fn pt_regs_size(&self) -> Result<u32, RecordError> {
        Ok(self.struct_named("pt_regs")?.size() as u32)
    }

    /// Checks that raw tracepoint `name` has the prototype the probes read (`params`, after the
    /// leading `void *`), in the notation of [`Self::describe`].
    pub fn check_tracepoint(&self, name: &str, params: &[&str]) -> Result<(), RecordError> {
        let found = self.tracepoint_params(name)?;
        if found.len() < params.len() || found.iter().zip(params).any(|(a, b)| a != b) {
            return Err(RecordError::Btf {
                what: format!(
                    "raw tracepoint {name} has the prototype ({}) on this kernel; sched-trace \
                     reads ({})",
                    found.join(", "),
                    params.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Parameter types of raw tracepoint `name`, without the leading context pointer.
    pub fn tracepoint_params(&self, name: &str) -> Result<Vec<String>, RecordError> {
        let typedef = format!("btf_trace_{name}");
        let not_found =
            || RecordError::Btf { what: format!("the kernel has no tracepoint {name} in its BTF") };
        let ty = self
            .btf
            .resolve_types_by_name(&typedef)
            .map_err(|_| not_found())?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))
            .ok_or_else(not_found)?;
        let Some(Type::FuncProto(proto)) = self.strip(ty).and_then(|t| match t {
            Type::Ptr(p) => self.btf.resolve_chained_type(&p).ok(),
            other => Some(other),
        }) else {
            return Err(not_found());
        };
        Ok(proto
            .parameters
            .iter()
            .skip(1)
            .map(|p| match self.btf.resolve_chained_type(p) {
                Ok(t) => self.describe(&t),
                Err(_) => "?".into(),
            })
            .collect())
    }

    /// A C-like spelling of a type: `struct task_struct *`, `bool`, `unsigned int`, `pid_t`.
    /// Qualifiers are dropped.
    pub fn describe(&self, ty: &Type) -> String {
        match ty {
            Type::Void => "void".into(),
            Type::Ptr(p) => match self.btf.resolve_chained_type(p) {
                Ok(t) => format!("{} *", self.describe(&t)),
                Err(_) => "void *".into(),
            },
            Type::Const(c) => self.chained(c),
            Type::Volatile(v) => self.chained(v),
            Type::Restrict(r) => self.chained(r),
            Type::TypeTag(t) => self.chained(t),
            Type::Struct(s) => format!("struct {}", self.btf.resolve_name(s).unwrap_or_default()),
            Type::Typedef(t) => self.btf.resolve_name(t).unwrap_or_default(),
            Type::Int(i) => self.btf.resolve_name(i).unwrap_or_default(),
            Type::Enum(e) => format!("enum {}", self.btf.resolve_name(e).unwrap_or_default()),
            other => other.name().to_string(),
        }
    }

    fn chained(&self, t: &dyn BtfType) -> String {
        match self.btf.resolve_chained_type(t) {
            Ok(t) => self.describe(&t),
            Err(_) => "?".into(),
        }
    }

    fn struct_named(&self, name: &str) -> Result<btf_rs::Struct, RecordError> {
        self.btf
            .resolve_types_by_name(name)
            .ok()
            .and_then(|v| {
                v.into_iter().find_map(|t| match t {
                    Type::Struct(s) if !s.members.is_empty() => Some(s),
                    _ => None,
                })
            })
            .ok_or_else(|| RecordError::Btf { what: format!("struct {name} is not in the kernel's BTF") })
    }

    /// Follows typedefs and qualifiers down to the underlying type.
    fn strip(&self, mut ty: Type) -> Option<Type> {
        for _ in 0..16 {
            ty = match ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Volatile(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Restrict(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(&t).ok()?,
                other => return Some(other),
            };
        }
        None
    }

    /// Byte offset of the member at dotted `path` in `st`, looking through anonymous members.
    fn member_offset(&self, st: &btf_rs::Struct, path: &str) -> Option<u32> {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let (bits, member_type) = self.find_member(st, head, 0)?;
        if bits % 8 != 0 {
            return None; // a bitfield: not something the probes can read
        }
        match rest {
            None => Some(bits / 8),
            Some(rest) => match self.strip(member_type)? {
                Type::Struct(inner) | Type::Union(inner) => {
                    Some(bits / 8 + self.member_offset(&inner, rest)?)
                }
                _ => None,
            },
        }
    }

    /// Finds member `name` of `st` (recursing into anonymous struct/union members, up to a few
    /// levels); returns its bit offset from the start of `st` and its type.
    fn find_member(&self, st: &btf_rs::Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 4 {
            return None;
        }
        for m in &st.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).ok()?;
            if member_name == name {
                return Some((m.bit_offset(), ty));
            }
            if member_name.is_empty()
                && let Some(Type::Struct(inner) | Type::Union(inner)) = self.strip(ty)
                && let Some((bits, t)) = self.find_member(&inner, name, depth + 1)
            {
                return Some((m.bit_offset() + bits, t));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These read the BTF of the machine the tests run on: every supported machine has one, and
    // on CI (CI=true) a machine without it fails the test instead of skipping it.
    fn kernel() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            assert!(std::env::var_os("CI").is_none(), "{VMLINUX_BTF} is missing: the kernel has no BTF");
            eprintln!("skipped: {VMLINUX_BTF} is missing");
            return None;
        }
        Some(KernelBtf::load().expect("BTF parses"))
    }

    #[test]
    fn finds_task_struct_offsets() {
        let Some(k) = kernel() else { return };
        let o = k.task_offsets().unwrap();
        assert!(o.pid > 0 && o.tgid > o.pid - 8 && o.comm > 0, "{o:?}");
        assert!(o.vruntime.is_some() && o.weight.is_some() && o.cpu.is_some(), "{o:?}");
    }

    #[test]
    fn finds_the_way_to_cgroups() {
        let Some(k) = kernel() else { return };
        let o = k.cgroup_offsets().expect("cgroup structures in BTF");
        // subsys[] is an array of pointers; cpuset and cpu are its first two controllers.
        assert!(o.css_set_cpu.abs_diff(o.css_set_cpuset) == 8, "{o:?}");
        assert!(k.cfs_rq_throttle_count().is_some());
    }

    #[test]
    fn describes_sched_switch() {
        let Some(k) = kernel() else { return };
        let p = k.tracepoint_params("sched_switch").unwrap();
        assert_eq!(p, ["bool", "struct task_struct *", "struct task_struct *", "unsigned int"]);
        assert!(k.check_tracepoint("sched_switch", &["bool", "struct task_struct *"]).is_ok());
        assert!(k.check_tracepoint("sched_switch", &["int"]).is_err());
        assert!(k.tracepoint_params("no_such_tracepoint").is_err());
    }
}
