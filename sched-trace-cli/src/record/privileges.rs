//! Checking, before anything is loaded, that this process may load and attach BPF programs.

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities the recorder needs but lacks, by name; empty when it has enough.
///
/// Loading tracing programs and attaching them needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN
/// (which implies both on kernels before 5.8).
pub fn missing_capabilities() -> Result<Vec<&'static str>, std::io::Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = parse_cap_eff(&status).unwrap_or(0);
    Ok(missing_from(effective))
}

fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_from(0x000001ffffffffff).is_empty());
    }

    #[test]
    fn bpf_and_perfmon_suffice_without_sys_admin() {
        assert!(missing_from((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }

    #[test]
    fn nobody_lacks_both() {
        assert_eq!(missing_from(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_from(1 << CAP_BPF), vec!["CAP_PERFMON"]);
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x000001ffffffffff));
    }
}
