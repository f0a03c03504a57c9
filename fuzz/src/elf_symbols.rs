//! The ELF symbol target: executables whose symbol and string tables, build-id note, DWARF
//! sections, program and section headers are mutated in place, and run through what reads a
//! traced process's files after recording — the build id (`sched-trace-binaries`, also what the
//! recorder reads of every mapped file) and the symbolizer (blazesym under the flame graph's
//! `Symbolizer`), asked to name offsets across the whole file as a mapping of a process.
//!
//! The mutated file is written to a temporary file first: blazesym reads executables by path,
//! as the flame graph command does.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use object::{Object, ObjectSection};
use sched_trace_flamegraph::{Mapping, Symbolizer};

use crate::{Outcome, Rng, Target};

pub struct ElfSymbols;

/// The sections whose contents the readers parse.
const SECTIONS: [&str; 14] = [
    ".symtab",
    ".strtab",
    ".dynsym",
    ".dynstr",
    ".note.gnu.build-id",
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_str",
    ".debug_line_str",
    ".debug_rnglists",
    ".debug_loclists",
    ".debug_aranges",
    ".gnu_debuglink",
];

/// Where a mutated executable is mapped in the made-up process.
const LOAD_ADDRESS: u64 = 0x5555_0000_0000;

impl Target for ElfSymbols {
    fn name(&self) -> &'static str {
        "elf"
    }

    fn mutate(&self, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut out = seed.to_vec();
        if out.is_empty() {
            return out;
        }
        let (start, len) = match rng.below(4) {
            // The ELF header, the program headers after it, or the section header table.
            0 => (0, out.len().min(64 + 56 * 12)),
            1 => section_headers(seed).unwrap_or((0, out.len())),
            _ => {
                let name = SECTIONS[rng.below(SECTIONS.len())];
                section_range(seed, name).unwrap_or((0, out.len()))
            }
        };
        if len == 0 || start >= out.len() {
            return out;
        }
        let len = len.min(out.len() - start);
        for _ in 0..1 + rng.below(6) {
            let at = start + rng.below(len);
            match rng.below(5) {
                0 => out[at] ^= 1 << rng.below(8),
                1 => out[at] = 0xff,
                2 => out[at] = 0,
                // A whole word that lies: a count, an offset or a size at its limits.
                _ => {
                    let word = [0u64, 1, u64::from(u32::MAX), u64::MAX, out.len() as u64, rng.next_u64()];
                    let value = word[rng.below(word.len())].to_le_bytes();
                    let width = if rng.one_in(2) { 4 } else { 8 };
                    let at = at - at % width;
                    let end = (at + width).min(out.len());
                    out[at..end].copy_from_slice(&value[..end - at]);
                }
            }
        }
        out
    }

    fn run(&self, input: &[u8]) -> Outcome {
        let build_id = sched_trace_binaries::build_id_of(input);
        let file = TempFile::new();
        if let Err(e) = std::fs::write(&file.0, input) {
            return Outcome::Refused(format!("cannot write {}: {e}", file.0.display()));
        }
        let on_disk = sched_trace_binaries::build_id(&file.0);
        let mapping = Mapping {
            start: LOAD_ADDRESS,
            end: LOAD_ADDRESS + input.len() as u64,
            offset: 0,
            path: file.0.clone(),
            build_id: build_id.as_ref().ok().and_then(|id| id.as_deref().map(sched_trace_binaries::hex)),
        };
        let mut symbolizer = Symbolizer::new([(1, 0, vec![mapping])], Vec::new());
        // Offsets across the whole file, as leaf frames and as return addresses.
        let step = (input.len() / 512).max(1);
        let addrs: Vec<u64> = (0..input.len()).step_by(step).map(|off| LOAD_ADDRESS + off as u64).collect();
        for stack in addrs.chunks(16) {
            symbolizer.want_user(1, 0, stack);
        }
        symbolizer.resolve();
        let mut frames = Vec::new();
        for stack in addrs.chunks(16) {
            frames.clear();
            symbolizer.user_frames(1, 0, stack, &mut frames);
        }
        match (build_id, on_disk) {
            (Err(e), _) => Outcome::Refused(e),
            (_, Err(e)) => Outcome::Refused(e.to_string()),
            _ => Outcome::Analysed,
        }
    }
}

/// The file range of section `name`, if the ELF still says where it is.
pub(crate) fn section_range(elf: &[u8], name: &str) -> Option<(usize, usize)> {
    let file = object::File::parse(elf).ok()?;
    let (start, len) = file.section_by_name(name)?.file_range()?;
    Some((usize::try_from(start).ok()?, usize::try_from(len).ok()?))
}

/// The file range of the section header table.
fn section_headers(elf: &[u8]) -> Option<(usize, usize)> {
    use object::read::elf::{ElfFile64, FileHeader};
    let file = ElfFile64::<object::Endianness>::parse(elf).ok()?;
    let (header, endian) = (file.elf_header(), file.endian());
    let size = usize::from(header.e_shentsize(endian)) * usize::from(header.e_shnum(endian));
    Some((usize::try_from(header.e_shoff(endian)).ok()?, size))
}

/// A file of this process's own, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(std::env::temp_dir().join(format!("sched-trace-fuzz-elf-{}-{n}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
