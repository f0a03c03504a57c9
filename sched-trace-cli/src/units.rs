//! Human-readable numbers: counts with thousands separators, byte sizes, durations; and the
//! latencies the command line takes (`1.5ms`, `250us`).

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Nanoseconds → `789 ns`, `45.6 µs`, `12.3 ms`, `1.234 s`.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

/// A latency as axes and labels show it: `850 ns`, `1 µs`, `12.5 µs`, `3.50 ms`, `1.20 s`
/// (three significant digits, none wasted on a round number).
pub fn latency(ns: u64) -> String {
    let (v, unit) = match ns {
        0..1_000 => (ns as f64, "ns"),
        1_000..1_000_000 => (ns as f64 / 1e3, "µs"),
        1_000_000..1_000_000_000 => (ns as f64 / 1e6, "ms"),
        _ => (ns as f64 / 1e9, "s"),
    };
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// A latency as the command line takes it, exact to the nanosecond in the largest unit that
/// keeps it short: `917.504us`, `1.048576ms`, `20ms`.
pub fn latency_arg(ns: u64) -> String {
    for (unit, per) in [("s", 1_000_000_000u64), ("ms", 1_000_000), ("us", 1_000)] {
        if ns >= per {
            let (whole, frac) = (ns / per, ns % per);
            if frac == 0 {
                return format!("{whole}{unit}");
            }
            let digits = per.ilog10() as usize;
            let frac = format!("{frac:0digits$}");
            return format!("{whole}.{}{unit}", frac.trim_end_matches('0'));
        }
    }
    format!("{ns}ns")
}

/// Parses a latency: a number (decimals allowed) and a unit `ns`, `us` (or `µs`), `ms` or `s`.
pub fn parse_latency(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let per: u64 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" => return Err(format!("`{s}` has no unit (ns, us, ms or s)")),
        other => return Err(format!("`{other}` is not a unit of time (ns, us, ms or s)")),
    };
    // Whole and fractional digits apart, so that `1.048576ms` is exactly 1048576 ns.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(format!("`{s}` is not a number of {unit}"));
    }
    let whole: u64 =
        if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("`{s}` is not a number"))? };
    let mut ns = whole.checked_mul(per).ok_or_else(|| format!("`{s}` is too large"))?;
    let mut scale = per;
    for d in frac.chars() {
        scale /= 10;
        if scale == 0 {
            return Err(format!("`{s}` is finer than a nanosecond"));
        }
        ns = ns
            .checked_add(scale * d.to_digit(10).unwrap_or(0) as u64)
            .ok_or_else(|| format!("`{s}` is too large"))?;
    }
    Ok(ns)
}

/// Parses `A..B`: two latencies, the first below the second.
pub fn parse_latency_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}` is not a range like 1ms..10ms"))?;
    let (a, b) = (parse_latency(a)?, parse_latency(b)?);
    if a >= b {
        return Err(format!("the range `{s}` is empty: its start is not below its end"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration_ns(789), "789 ns");
        assert_eq!(duration_ns(45_600), "45.6 µs");
        assert_eq!(duration_ns(12_300_000), "12.3 ms");
        assert_eq!(duration_ns(1_234_000_000), "1.234 s");
    }

    #[test]
    fn latencies_round_trip_through_their_flags() {
        assert_eq!(
            [850, 1_000, 12_500, 3_500_000, 100_000_000, 1_200_000_000].map(latency),
            ["850 ns", "1 µs", "12.5 µs", "3.50 ms", "100 ms", "1.20 s"]
        );
        for ns in [917_504, 1_048_576, 1_000_000, 20_000_000, 999, 1_500_000_000, 1, 123_456_789] {
            assert_eq!(parse_latency(&latency_arg(ns)), Ok(ns), "{}", latency_arg(ns));
        }
        assert_eq!(latency_arg(1_048_576), "1.048576ms");
        assert_eq!(parse_latency("250µs"), Ok(250_000));
        assert_eq!(parse_latency_range("1ms..10ms"), Ok((1_000_000, 10_000_000)));
        for bad in ["10", "1.5", "ms", "1.2.3ms", "0.5ns", "1h", "99999999999999999999s"] {
            assert!(parse_latency(bad).is_err(), "{bad}");
        }
        assert!(parse_latency_range("10ms..1ms").is_err() && parse_latency_range("1ms").is_err());
    }
}
