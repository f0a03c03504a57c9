//! Facts about the recording host that go into the trace header.

use std::ffi::CStr;

/// Reads `clock` in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes into a live timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The offset wall clock − CLOCK_MONOTONIC and the half-width of the window it was measured in:
/// the best of a few monotonic/realtime/monotonic brackets.
pub fn realtime_offset() -> (i64, u64) {
    let mut best = (0i64, u64::MAX);
    for _ in 0..16 {
        let a = monotonic_ns();
        let wall = clock_ns(libc::CLOCK_REALTIME);
        let b = monotonic_ns();
        let half = (b - a) / 2;
        if half < best.1 {
            best = (wall as i64 - (a + half) as i64, half);
        }
    }
    best
}

/// (hostname, kernel release) from uname(2).
pub fn uname() -> (String, String) {
    // SAFETY: uname(2) fills a zeroed struct whose fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (String::new(), String::new());
        }
        let s = |f: &[libc::c_char]| CStr::from_ptr(f.as_ptr()).to_string_lossy().into_owned();
        (s(&u.nodename), s(&u.release))
    }
}

/// (possible CPU count, online CPU ids).
pub fn cpus() -> (u32, Vec<u32>) {
    let possible = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(0);
    let online = aya::util::online_cpus().unwrap_or_default();
    (possible, online)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_maps_monotonic_to_wall_time() {
        let (offset, err) = realtime_offset();
        assert!(err < 1_000_000, "measured within a millisecond, got {err} ns");
        let wall = clock_ns(libc::CLOCK_REALTIME) as i64;
        let mapped = monotonic_ns() as i64 + offset;
        assert!((wall - mapped).abs() < 5_000_000, "{wall} vs {mapped}");
    }
}
