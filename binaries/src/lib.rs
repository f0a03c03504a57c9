//! What sched-trace reads from the executables it traces, in one place for the whole workspace:
//! the recorder (which files a process has mapped, and how to attach probes to them) and the
//! symbolizer (what the addresses in those files are) read binaries through this crate only, so
//! that each binary format has one parser.

use std::path::Path;

pub mod go;
pub mod go_layouts;

/// Why a binary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file this reads: {what}")]
    Format { path: String, what: String },
}

/// The GNU build id of the ELF image `data` (`.note.gnu.build-id`), if it has one.
pub fn build_id_of(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use object::Object;
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    file.build_id().map(|id| id.map(<[u8]>::to_vec)).map_err(|e| e.to_string())
}

/// The GNU build id of the ELF file at `path`. Reads the headers and the notes only, not the
/// whole file: the recorder asks this of every library a traced process maps, while it records.
pub fn build_id(path: &Path) -> Result<Option<Vec<u8>>, BinaryError> {
    use object::Object;
    let file = std::fs::File::open(path)
        .map_err(|source| BinaryError::Io { path: path.display().to_string(), source })?;
    let cache = object::ReadCache::new(file);
    let format =
        |e: object::Error| BinaryError::Format { path: path.display().to_string(), what: e.to_string() };
    let elf = object::File::parse(&cache).map_err(format)?;
    elf.build_id().map(|id| id.map(<[u8]>::to_vec)).map_err(format)
}

/// Bytes as lower-case hex (how build ids are written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_build_id() {
        let exe = std::env::current_exe().unwrap();
        let id = build_id(&exe).unwrap();
        // Rust binaries on Linux are linked with a build id by default.
        assert!(id.as_ref().is_some_and(|id| id.len() >= 16), "{id:?}");
        assert!(build_id(Path::new("/no/such/file")).is_err());
        assert!(build_id_of(b"not an ELF").is_err());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
