//! USDT (SystemTap SDT) probes: found in an executable's `.note.stapsdt` section (read with the
//! `object` crate), their argument operands parsed into the specs the kernel program reads.
//!
//! Each note describes one probe site: its address, the address of `.stapsdt.base` at link time
//! (to correct for prelinking), an optional semaphore, the provider and name, and the argument
//! operands in AT&T syntax: `-8@%rdi` (a register), `4@$5` (a constant), `8@-16(%rbp)` (memory).

use std::path::{Path, PathBuf};

use object::{
    Endianness, Object, ObjectSection,
    elf::SHT_NOTE,
    read::elf::{ElfFile64, SectionHeader},
};
use sched_trace_abi::{USER_TASK_ARGS, UsdtArg, UsdtSpec, usdt_arg};

/// The note type of SystemTap SDT probes (in notes named "stapsdt").
const NT_STAPSDT: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum UsdtError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {what}")]
    Elf { path: PathBuf, what: String },
}

/// One probe site of an executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// Virtual address of the probe's instruction (prelink-corrected).
    pub address: u64,
    /// Offset of that instruction in the file, where a uprobe attaches.
    pub file_offset: u64,
    /// Address of the probe's semaphore, 0 when it has none.
    pub semaphore: u64,
    /// The operands as written in the note.
    pub arg_string: String,
}

/// A register of x86-64, by the field of the kernel's `struct pt_regs` that holds it.
pub type PtRegsField = &'static str;

/// One parsed operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    Const(i64),
    Reg(PtRegsField),
    Mem { base: PtRegsField, disp: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// Bytes (1, 2, 4, 8), negative when signed.
    pub size: i32,
    pub operand: Operand,
}

/// Reads every SDT probe of the ELF file at `path`.
pub fn read_probes(path: &Path) -> Result<Vec<UsdtProbe>, UsdtError> {
    let data = std::fs::read(path).map_err(|source| UsdtError::Io { path: path.to_path_buf(), source })?;
    probes_in(&data).map_err(|what| UsdtError::Elf { path: path.to_path_buf(), what })
}

/// Every SDT probe of the ELF image `data`, or why it has none that can be read.
pub fn probes_in(data: &[u8]) -> Result<Vec<UsdtProbe>, String> {
    if data.starts_with(b"#!") {
        return Err("it is a script; the probes of the programs it runs are read when they start".into());
    }
    if data.starts_with(b"\x7fELF") && data.get(4) == Some(&1) {
        return Err("it is a 32-bit ELF file; only 64-bit x86 executables are read".into());
    }
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| format!("not a 64-bit ELF file ({e})"))?;
    let endian = file.endian();
    let base_section = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut probes = Vec::new();
    for section in file.elf_section_table().iter() {
        if section.sh_type(endian) != SHT_NOTE {
            continue;
        }
        let Some(mut notes) = section.notes(endian, data).map_err(|e| e.to_string())? else {
            continue;
        };
        while let Some(note) = notes.next().map_err(|e| e.to_string())? {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let Some(mut p) = parse_note(note.desc(), endian) else {
                return Err("a .note.stapsdt entry is malformed".into());
            };
            if let (Some(actual), Some(linked)) = (base_section, p.1) {
                p.0.address = p.0.address.wrapping_add(actual.wrapping_sub(linked));
            }
            let mut probe = p.0;
            probe.file_offset = file_offset(&file, probe.address).ok_or_else(|| {
                format!("probe {}:{} at {:#x} is in no section", probe.provider, probe.name, probe.address)
            })?;
            probes.push(probe);
        }
    }
    Ok(probes)
}

/// Parses a note's descriptor: pc, base, semaphore (each a word), then three C strings.
fn parse_note(desc: &[u8], endian: Endianness) -> Option<(UsdtProbe, Option<u64>)> {
    use object::Endian;
    let word =
        |i: usize| -> Option<u64> { Some(endian.read_u64(desc.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
    let (pc, base, semaphore) = (word(0)?, word(1)?, word(2)?);
    let mut strings = desc.get(24..)?.split(|&b| b == 0);
    let mut next = || strings.next().map(|s| String::from_utf8_lossy(s).into_owned());
    let (provider, name, arg_string) = (next()?, next()?, next().unwrap_or_default());
    Some((
        UsdtProbe { provider, name, address: pc, file_offset: 0, semaphore, arg_string },
        (base != 0).then_some(base),
    ))
}

fn file_offset(file: &ElfFile64<Endianness>, address: u64) -> Option<u64> {
    file.sections().find_map(|s| {
        let (start, size) = (s.address(), s.size());
        let (offset, _) = s.file_range()?;
        let inside = address >= start && address - start < size;
        if inside { offset.checked_add(address - start) } else { None }
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read USDT operand `{operand}`: {why}")]
pub struct OperandError {
    pub operand: String,
    pub why: &'static str,
}

/// Parses a probe's operand string.
pub fn parse_args(s: &str) -> Result<Vec<ArgSpec>, OperandError> {
    s.split_whitespace().map(parse_arg).collect()
}

fn parse_arg(tok: &str) -> Result<ArgSpec, OperandError> {
    let err = |why| OperandError { operand: tok.to_string(), why };
    let (size, operand) = tok.split_once('@').ok_or_else(|| err("no size@ prefix"))?;
    let size: i32 = size.parse().map_err(|_| err("the size is not a number"))?;
    if !matches!(size.unsigned_abs(), 1 | 2 | 4 | 8) {
        return Err(err("the size is not 1, 2, 4 or 8 bytes"));
    }
    let operand = if let Some(imm) = operand.strip_prefix('$') {
        Operand::Const(parse_int(imm).ok_or_else(|| err("bad constant"))?)
    } else if let Some(reg) = operand.strip_prefix('%') {
        Operand::Reg(register(reg).ok_or_else(|| err("unknown register"))?)
    } else if let Some((disp, rest)) = operand.split_once('(') {
        let reg = rest
            .strip_suffix(')')
            .and_then(|r| r.strip_prefix('%'))
            .ok_or_else(|| err("bad memory operand"))?;
        if reg.contains(',') {
            return Err(err("indexed memory operands are not supported"));
        }
        let disp =
            if disp.is_empty() { 0 } else { parse_int(disp).ok_or_else(|| err("symbolic displacement"))? };
        Operand::Mem { base: register(reg).ok_or_else(|| err("unknown register"))?, disp }
    } else {
        return Err(err("unknown operand form"));
    };
    Ok(ArgSpec { size, operand })
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// Maps an x86-64 register name (any width) to its `struct pt_regs` field.
fn register(name: &str) -> Option<PtRegsField> {
    Some(match name {
        "rax" | "eax" | "ax" | "al" => "ax",
        "rbx" | "ebx" | "bx" | "bl" => "bx",
        "rcx" | "ecx" | "cx" | "cl" => "cx",
        "rdx" | "edx" | "dx" | "dl" => "dx",
        "rsi" | "esi" | "si" | "sil" => "si",
        "rdi" | "edi" | "di" | "dil" => "di",
        "rbp" | "ebp" | "bp" | "bpl" => "bp",
        "rsp" | "esp" | "sp" | "spl" => "sp",
        "rip" => "ip",
        "r8" | "r8d" | "r8w" | "r8b" => "r8",
        "r9" | "r9d" | "r9w" | "r9b" => "r9",
        "r10" | "r10d" | "r10w" | "r10b" => "r10",
        "r11" | "r11d" | "r11w" | "r11b" => "r11",
        "r12" | "r12d" | "r12w" | "r12b" => "r12",
        "r13" | "r13d" | "r13w" | "r13b" => "r13",
        "r14" | "r14d" | "r14w" | "r14b" => "r14",
        "r15" | "r15d" | "r15w" | "r15b" => "r15",
        _ => return None,
    })
}

/// The `struct pt_regs` fields operands can name.
pub const PT_REGS_FIELDS: &[PtRegsField] = &[
    "ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

/// Builds the kernel's spec for `args`, with `pt_regs` field offsets from `offset_of`.
pub fn kernel_spec(
    args: &[ArgSpec],
    offset_of: impl Fn(PtRegsField) -> Option<u32>,
) -> Result<UsdtSpec, &'static str> {
    if args.len() > USER_TASK_ARGS {
        return Err("more arguments than a record carries");
    }
    let mut spec = UsdtSpec { nargs: args.len() as u32, ..Default::default() };
    for (slot, a) in spec.args.iter_mut().zip(args) {
        *slot = match a.operand {
            Operand::Const(v) => {
                UsdtArg { kind: usdt_arg::CONST, size: a.size, value: v, ..Default::default() }
            }
            Operand::Reg(r) => UsdtArg {
                kind: usdt_arg::REG,
                size: a.size,
                reg_off: offset_of(r).ok_or("register not in pt_regs")?,
                ..Default::default()
            },
            Operand::Mem { base, disp } => UsdtArg {
                kind: usdt_arg::REG_DEREF,
                size: a.size,
                reg_off: offset_of(base).ok_or("register not in pt_regs")?,
                value: disp,
                ..Default::default()
            },
        };
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_operand_forms() {
        let a = parse_args("-8@%rdi 4@$5 8@-16(%rbp) -4@$-3 2@(%rax) 1@%r9b 8@0x10(%rsp)").unwrap();
        assert_eq!(a[0], ArgSpec { size: -8, operand: Operand::Reg("di") });
        assert_eq!(a[1], ArgSpec { size: 4, operand: Operand::Const(5) });
        assert_eq!(a[2], ArgSpec { size: 8, operand: Operand::Mem { base: "bp", disp: -16 } });
        assert_eq!(a[3], ArgSpec { size: -4, operand: Operand::Const(-3) });
        assert_eq!(a[4], ArgSpec { size: 2, operand: Operand::Mem { base: "ax", disp: 0 } });
        assert_eq!(a[5], ArgSpec { size: 1, operand: Operand::Reg("r9") });
        assert_eq!(a[6], ArgSpec { size: 8, operand: Operand::Mem { base: "sp", disp: 16 } });
        assert!(parse_args("").unwrap().is_empty());
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in ["8@%xmm0", "3@%rax", "8@sym(%rip)", "8@(%rax,%rbx,8)", "%rax", "8@rax"] {
            assert!(parse_args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_carry_register_offsets() {
        let args = parse_args("-8@%rdi 8@-16(%rbp) 4@$7").unwrap();
        let spec = kernel_spec(&args, |r| PT_REGS_FIELDS.iter().position(|f| *f == r).map(|i| i as u32 * 8))
            .unwrap();
        assert_eq!(spec.nargs, 3);
        assert_eq!((spec.args[0].kind, spec.args[0].reg_off, spec.args[0].size), (usdt_arg::REG, 40, -8));
        assert_eq!(
            (spec.args[1].kind, spec.args[1].reg_off, spec.args[1].value),
            (usdt_arg::REG_DEREF, 48, -16)
        );
        assert_eq!((spec.args[2].kind, spec.args[2].value), (usdt_arg::CONST, 7));
        assert!(
            kernel_spec(&parse_args("8@%rax 8@%rax 8@%rax 8@%rax 8@%rax 8@%rax").unwrap(), |_| Some(0))
                .is_err()
        );
    }
}
