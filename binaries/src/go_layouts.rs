//! Runtime layouts of every supported Go version, for binaries stripped of their DWARF.
//!
//! `go-layouts.json` is generated, never edited: `cargo xtask go-layouts` builds a program with
//! each Go toolchain it installs and reads the layout from that build's DWARF (with
//! [`super::go::dwarf_layout`]); the Go tests check each entry against DWARF again.

use std::{collections::BTreeMap, sync::OnceLock};

use crate::go::GoLayout;

/// The generated table, keyed on "major.minor".
const TABLE: &str = include_str!("go-layouts.json");

fn table() -> &'static BTreeMap<String, GoLayout> {
    static PARSED: OnceLock<BTreeMap<String, GoLayout>> = OnceLock::new();
    // The file is part of the source: a table that does not parse fails the tests, and at run
    // time it means no entry (the binary is refused with a message), not a panic.
    PARSED.get_or_init(|| serde_json::from_str(TABLE).unwrap_or_default())
}

/// The layout of Go `major.minor`, if the table has it.
pub fn for_version(major: u32, minor: u32) -> Option<GoLayout> {
    table().get(&format!("{major}.{minor}")).cloned()
}

/// The versions the table covers, for messages ("1.22–1.27").
pub fn covered() -> String {
    let mut versions: Vec<(u32, u32)> = table()
        .keys()
        .filter_map(|k| k.split_once('.').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
        .collect();
    versions.sort();
    match (versions.first(), versions.last()) {
        (Some(a), Some(b)) => format!("Go {}.{}–{}.{}", a.0, a.1, b.0, b.1),
        _ => "no Go versions".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generated_table_parses_and_covers_the_supported_versions() {
        let table: std::collections::BTreeMap<String, super::GoLayout> =
            serde_json::from_str(super::TABLE).expect("go-layouts.json parses");
        for minor in 22..=27 {
            assert!(table.contains_key(&format!("1.{minor}")), "no entry for Go 1.{minor}");
        }
        assert_eq!(super::covered(), "Go 1.22–1.27");
        assert!(super::for_version(1, 21).is_none());
    }
}
