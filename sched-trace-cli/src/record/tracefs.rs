//! tracefs: where it is mounted, and the field layout of tracepoints, read from their `format`
//! files at run time rather than compiled in.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use super::RecordError;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs root, mounting tracefs on /sys/kernel/tracing if it is not mounted yet.
pub fn ensure_mounted() -> Result<PathBuf, RecordError> {
    for c in CANDIDATES {
        if Path::new(c).join("events").is_dir() {
            return Ok(PathBuf::from(c));
        }
    }
    let target = CANDIDATES[0];
    let c_target = CString::new(target).expect("no NUL in a constant");
    let c_fs = CString::new("tracefs").expect("no NUL in a constant");
    let c_src = CString::new("nodev").expect("no NUL in a constant");
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(c_src.as_ptr(), c_target.as_ptr(), c_fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(RecordError::Tracefs {
            what: format!("tracefs is not mounted and mounting it on {target} failed"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(PathBuf::from(target))
}

/// A field of a tracepoint's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Reads the fields of `category/name` from its tracefs `format` file.
pub fn fields(root: &Path, category: &str, name: &str) -> Result<Vec<Field>, RecordError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| RecordError::Tracefs {
        what: format!("cannot read the layout of tracepoint {category}/{name} ({})", path.display()),
        source,
    })?;
    Ok(parse_format(&text))
}

/// Offset of field `field` of `category/name`.
pub fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> Result<u32, RecordError> {
    fields(root, category, name)?.into_iter().find(|f| f.name == field).map(|f| f.offset).ok_or_else(|| {
        RecordError::Tracefs {
            what: format!("tracepoint {category}/{name} has no field `{field}`"),
            source: io::Error::from(io::ErrorKind::NotFound),
        }
    })
}

/// Parses lines like `\tfield:int epfd;\toffset:16;\tsize:8;\tsigned:0;`.
fn parse_format(text: &str) -> Vec<Field> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else { continue };
        // The name is the last identifier of the declaration, before any array suffix.
        let decl = decl.split('[').next().unwrap_or(decl);
        let Some(name) = decl.split(|c: char| c.is_whitespace() || c == '*').rfind(|s| !s.is_empty()) else {
            continue;
        };
        out.push(Field { name: name.to_string(), offset, size });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOLL_PWAIT2: &str = "name: sys_enter_epoll_pwait2
ID: 1065
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int epfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct epoll_event * events;\toffset:24;\tsize:8;\tsigned:0;
\tfield:const struct __kernel_timespec * timeout;\toffset:40;\tsize:8;\tsigned:0;
\tfield:char oldcomm[16];\toffset:48;\tsize:16;\tsigned:0;

print fmt: \"epfd: 0x%08lx\"";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let f = parse_format(EPOLL_PWAIT2);
        let get = |n: &str| f.iter().find(|x| x.name == n).cloned();
        assert_eq!(get("epfd"), Some(Field { name: "epfd".into(), offset: 16, size: 8 }));
        assert_eq!(get("events").map(|x| x.offset), Some(24));
        assert_eq!(get("timeout").map(|x| x.offset), Some(40));
        assert_eq!(get("oldcomm").map(|x| x.size), Some(16));
        assert_eq!(get("__syscall_nr").map(|x| x.offset), Some(8));
    }
}
