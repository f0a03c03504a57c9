//! The `refrt` binary carries a SystemTap SDT note (provider `refrt`) for every probe of the
//! contract, with one operand per argument: what `bpftrace -l 'usdt:refrt:*'` lists.

use std::collections::HashMap;

use object::elf::SHT_NOTE;
use object::read::elf::{ElfFile64, SectionHeader};
use object::{Endian, Endianness};
use reference_runtime::probes::PROBES;

/// (provider, name, operands) of every stapsdt note.
fn stapsdt_notes(path: &str) -> Vec<(String, String, String)> {
    let data = std::fs::read(path).expect("read the refrt binary");
    let file = ElfFile64::<Endianness>::parse(&*data).expect("an ELF file");
    let endian = file.endian();
    let mut found = Vec::new();
    for section in file.elf_section_table().iter() {
        if section.sh_type(endian) != SHT_NOTE {
            continue;
        }
        let Some(mut notes) = section.notes(endian, &*data).expect("readable notes") else { continue };
        while let Some(note) = notes.next().expect("a note") {
            if note.name() != b"stapsdt" || note.n_type(endian) != 3 {
                continue;
            }
            let desc = note.desc();
            let pc = endian.read_u64(desc[..8].try_into().expect("8 bytes"));
            assert_ne!(pc, 0, "a probe without an address");
            let mut strings = desc[24..].split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned());
            let mut next = || strings.next().expect("three strings");
            found.push((next(), next(), next()));
        }
    }
    found
}

#[test]
fn every_probe_has_a_note_with_its_arguments() {
    let notes = stapsdt_notes(env!("CARGO_BIN_EXE_refrt"));
    let mut sites: HashMap<&str, usize> = HashMap::new();
    for (provider, name, operands) in &notes {
        assert_eq!(provider, "refrt", "foreign provider in {name}");
        let def = PROBES
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("probe {name} is not in the table"));
        let ops: Vec<&str> = operands.split_whitespace().collect();
        assert_eq!(ops.len(), def.args.len(), "{name}: operands {operands:?}");
        assert!(ops.iter().all(|o| o.starts_with("-8@")), "{name}: operands {operands:?}");
        *sites.entry(def.name).or_default() += 1;
    }
    for p in PROBES {
        // Two sites per probe: the path without a ground-truth log and the path with one.
        assert_eq!(sites.get(p.name), Some(&2), "sites of {}", p.name);
    }
}
