//! The USDT note target: ELF files whose `.note.stapsdt` section is mutated — probe addresses,
//! semaphores, `.stapsdt.base`, provider and probe names, and operand strings rewritten, the
//! ELF written anew so that it stays whole; or raw bytes of the note section flipped in place, so
//! that note headers lie about their lengths — and run through what `record` does with a traced
//! executable before anything reaches the kernel: find the probes, parse their operands, build
//! the kernel's argument specs.

use object::{
    Architecture, BinaryFormat, Endianness, Object, ObjectSection, SectionKind, write::Object as ObjectWriter,
};
use sched_trace::record::usdt::{self, UsdtProbe};

use crate::{Outcome, Rng, Target};

pub struct UsdtNotes;

impl Target for UsdtNotes {
    fn name(&self) -> &'static str {
        "usdt"
    }

    fn mutate(&self, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        match usdt::probes_in(seed) {
            Ok(probes) if !probes.is_empty() && !rng.one_in(4) => {
                let mut notes: Vec<Note> = probes.iter().map(Note::from).collect();
                mutate_notes(&mut notes, rng);
                elf_with_notes(&notes)
            }
            _ => flip_note_bytes(seed, rng),
        }
    }

    fn run(&self, input: &[u8]) -> Outcome {
        let probes = match usdt::probes_in(input) {
            Ok(p) => p,
            Err(e) => return Outcome::Refused(e),
        };
        for p in &probes {
            // Register offsets as the kernel's pt_regs has them (any numbers do here).
            if let Ok(args) = usdt::parse_args(&p.arg_string) {
                let _ = usdt::kernel_spec(&args, |r| {
                    usdt::PT_REGS_FIELDS.iter().position(|f| *f == r).map(|i| i as u32 * 8)
                });
            }
        }
        Outcome::Analysed
    }
}

/// One SDT note, as the ELF has it.
#[derive(Clone, Debug)]
pub struct Note {
    pub provider: String,
    pub name: String,
    pub args: String,
    pub pc: u64,
    pub base: u64,
    pub semaphore: u64,
}

impl From<&UsdtProbe> for Note {
    fn from(p: &UsdtProbe) -> Note {
        Note {
            provider: p.provider.clone(),
            name: p.name.clone(),
            args: p.arg_string.clone(),
            pc: p.address,
            base: 0,
            semaphore: p.semaphore,
        }
    }
}

/// A small relocatable x86-64 ELF file with a text section, `.stapsdt.base` and these notes:
/// the shape of what `record` reads, without a real program.
pub fn elf_with_notes(notes: &[Note]) -> Vec<u8> {
    let mut obj = ObjectWriter::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    obj.append_section_data(text, &[0x90; 256], 16);
    let base = obj.add_section(Vec::new(), b".stapsdt.base".to_vec(), SectionKind::ReadOnlyData);
    obj.append_section_data(base, &[0], 1);
    let section = obj.add_section(Vec::new(), b".note.stapsdt".to_vec(), SectionKind::Note);
    let mut data = Vec::new();
    for n in notes {
        let mut desc = Vec::new();
        for w in [n.pc, n.base, n.semaphore] {
            desc.extend_from_slice(&w.to_le_bytes());
        }
        for s in [&n.provider, &n.name, &n.args] {
            desc.extend_from_slice(s.as_bytes());
            desc.push(0);
        }
        data.extend_from_slice(&8u32.to_le_bytes()); // namesz: "stapsdt\0"
        data.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        data.extend_from_slice(&3u32.to_le_bytes()); // NT_STAPSDT
        data.extend_from_slice(b"stapsdt\0");
        data.extend_from_slice(&desc);
        data.resize(data.len().next_multiple_of(4), 0);
    }
    obj.append_section_data(section, &data, 4);
    obj.write().unwrap_or_default()
}

/// The seeds this target starts from when no real executable is at hand: the reference
/// runtime's probe shapes.
pub fn seeds() -> Vec<Vec<u8>> {
    let note = |name: &str, args: &str, pc: u64| Note {
        provider: "refrt".into(),
        name: name.into(),
        args: args.into(),
        pc,
        base: 0,
        semaphore: 0,
    };
    vec![
        elf_with_notes(&[
            note("task_run", "8@%rdi 8@%rsi -8@%rdx", 0x10),
            note("task_park", "8@-16(%rbp) 4@$5 8@%r9", 0x20),
        ]),
        elf_with_notes(&[note("task_spawn", "", 0x0), note("steal", "-4@%eax 1@%r9b 2@(%rax)", 0xff)]),
    ]
}

const OPERANDS: [&str; 16] = [
    "%rdi",
    "%eax",
    "%r9b",
    "$5",
    "$-3",
    "$0x10",
    "-16(%rbp)",
    "(%rax)",
    "sym(%rip)",
    "(%rax,%rbx,8)",
    "%xmm0",
    "0x7fffffffffffffff(%rsp)",
    "-9223372036854775808(%rsp)",
    "$99999999999999999999",
    "%",
    "",
];
const SIZES: [&str; 10] = ["8", "-8", "4", "-4", "2", "1", "3", "0", "16", "x"];

fn mutate_notes(notes: &mut Vec<Note>, rng: &mut Rng) {
    let i = rng.below(notes.len());
    let n = &mut notes[i];
    match rng.below(7) {
        0 => n.pc = [0, 1, 0xff, 0x100, u64::MAX, u64::MAX - 8, rng.next_u64()][rng.below(7)],
        1 => n.base = [0, 1, u64::MAX, rng.next_u64()][rng.below(4)],
        2 => n.semaphore = [0, 1, rng.next_u64()][rng.below(3)],
        3 => {
            let count = rng.below(7);
            n.args = (0..count)
                .map(|_| format!("{}@{}", SIZES[rng.below(SIZES.len())], OPERANDS[rng.below(OPERANDS.len())]))
                .collect::<Vec<_>>()
                .join(" ");
        }
        4 => n.name = ["", "task_run", "x".repeat(300).as_str(), "\u{fffd}"][rng.below(4)].to_string(),
        5 => {
            let copy = n.clone();
            notes.push(copy);
        }
        _ => {
            if notes.len() > 1 {
                notes.remove(i);
            }
        }
    }
}

/// Flips bytes inside the note section (its note headers and descriptors), leaving the rest of
/// the ELF as it was.
fn flip_note_bytes(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let range = object::File::parse(seed)
        .ok()
        .and_then(|f| f.section_by_name(".note.stapsdt").and_then(|s| s.file_range()));
    let (start, len) = match range {
        Some((start, len)) if len > 0 => (start as usize, len as usize),
        _ => (0, out.len()),
    };
    if len == 0 || start + len > out.len() {
        return out;
    }
    for _ in 0..1 + rng.below(4) {
        let at = start + rng.below(len);
        out[at] = match rng.below(3) {
            0 => out[at] ^ (1 << rng.below(8)),
            1 => 0xff,
            _ => 0,
        };
    }
    out
}
