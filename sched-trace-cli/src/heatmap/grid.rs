//! The heat map's cells: time columns of one width, latency rows in log-linear buckets, and per
//! cell the count, who contributed most and the longest events — all of a fixed size, so that
//! a map takes the same memory for ten events as for ten million.

use crate::correlate::Sample;

/// Latency buckets as an HDR histogram has them: each power of two split into `sub` equal
/// sub-buckets. Row `e·sub + s` holds `[2^e + s·2^e/sub, 2^e + (s+1)·2^e/sub)` ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub sub: u32,
}

impl Buckets {
    /// Latencies from 2^MAX_EXP ns (about 73 minutes) on share the last row.
    pub const MAX_EXP: u32 = 42;
    pub const MAX_SUB: u32 = 16;

    pub fn new(sub: u32) -> Buckets {
        Buckets { sub: sub.clamp(1, Self::MAX_SUB) }
    }

    pub fn rows(&self) -> usize {
        ((Self::MAX_EXP + 1) * self.sub) as usize
    }

    pub fn row(&self, ns: u64) -> usize {
        if ns < 2 {
            return 0;
        }
        let e = 63 - ns.leading_zeros();
        if e > Self::MAX_EXP {
            return self.rows() - 1;
        }
        let s = (((ns - (1u64 << e)) as u128 * self.sub as u128) >> e) as u32;
        (e * self.sub + s) as usize
    }

    /// The smallest latency in `row` (0 for the first).
    pub fn lower(&self, row: usize) -> u64 {
        if row == 0 {
            return 0;
        }
        let (e, s) = (row as u32 / self.sub, row as u32 % self.sub);
        // Rounded up, so that below 2^log2(sub) ns (where sub-buckets are narrower than a
        // nanosecond) every value still lies in its row.
        (1u64 << e) + ((1u128 << e) * s as u128).div_ceil(self.sub as u128) as u64
    }

    /// The latency just past `row`.
    pub fn upper(&self, row: usize) -> u64 {
        self.lower(row + 1)
    }
}

/// Who an event is about: a thread, and the user task for task metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Who {
    pub tid: u32,
    pub pid: u32,
    pub task: Option<u64>,
}

/// The threads or tasks that contributed most to a cell: the Misra–Gries summary with
/// [`TOP`] counters (every one holding more than a (TOP+1)-th of the cell is among them).
pub const TOP: usize = 3;
/// Events kept per cell: its longest.
pub const EXEMPLARS: usize = 3;

#[derive(Clone, Debug, Default)]
pub struct CellDetail {
    pub top: Vec<(Who, u64)>,
    /// The cell's longest events, longest first.
    pub longest: Vec<Sample>,
}

impl CellDetail {
    fn add(&mut self, s: &Sample) {
        let who = Who { tid: s.tid, pid: s.pid, task: s.task };
        if let Some(e) = self.top.iter_mut().find(|e| e.0 == who) {
            e.1 += 1;
        } else if self.top.len() < TOP {
            self.top.push((who, 1));
        } else {
            for e in &mut self.top {
                e.1 -= 1;
            }
            self.top.retain(|e| e.1 > 0);
        }
        if self.longest.len() < EXEMPLARS || self.longest.last().is_some_and(|l| l.ns < s.ns) {
            let at = self.longest.partition_point(|l| l.ns >= s.ns);
            self.longest.insert(at, *s);
            self.longest.truncate(EXEMPLARS);
        }
    }
}

/// The columns of a map: `count` of `width_ns` each from `start_ns` (the trace's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    pub start_ns: u64,
    pub width_ns: u64,
    pub count: usize,
}

impl Columns {
    /// Columns for `[from, to)`: `count` of them if given, else of `width_ns` if given, else about
    /// `target` of a round width.
    pub fn covering(
        from: u64,
        to: u64,
        width_ns: Option<u64>,
        count: Option<usize>,
        target: usize,
    ) -> Columns {
        let len = to.saturating_sub(from).max(1);
        let width = match (width_ns, count) {
            (Some(w), _) => w.max(1),
            (None, Some(n)) => len.div_ceil(n.max(1) as u64),
            (None, None) => round_width(len.div_ceil(target.max(1) as u64)),
        };
        let count = len.div_ceil(width).clamp(1, MAX_COLUMNS as u64) as usize;
        Columns { start_ns: from, width_ns: width, count }
    }

    /// The column an event that ended at `ts` falls in (events outside go to the edge ones).
    pub fn column(&self, ts: u64) -> usize {
        (ts.saturating_sub(self.start_ns) / self.width_ns).min(self.count as u64 - 1) as usize
    }
}

/// The most columns a map has (a 10-minute trace in 100 ms columns; the memory bound).
pub const MAX_COLUMNS: usize = 6_000;

/// The smallest 1-2-5 width (ns) at least `at_least`.
pub fn round_width(at_least: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            let w = unit.saturating_mul(m);
            if w >= at_least {
                return w;
            }
        }
        if unit > u64::MAX / 10 {
            return u64::MAX;
        }
        unit *= 10;
    }
}

/// The cells of one map.
#[derive(Clone, Debug)]
pub struct Grid {
    pub columns: Columns,
    pub buckets: Buckets,
    /// Column-major: `counts[col * rows + row]`.
    pub counts: Vec<u64>,
    /// Per cell that has events, its details (when kept), in the same order.
    pub details: Option<Vec<Option<Box<CellDetail>>>>,
    /// Per column, the longest event in it.
    pub column_max: Vec<u64>,
    pub events: u64,
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Grid {
    /// The latency below which a share `q` of the events fall, at bucket resolution (but never
    /// more than the longest event).
    pub fn quantile(&self, q: f64) -> u64 {
        quantile(self.buckets, &self.row_totals(), q).min(self.max_ns)
    }

    pub fn new(columns: Columns, buckets: Buckets, details: bool) -> Grid {
        let cells = columns.count * buckets.rows();
        Grid {
            columns,
            buckets,
            counts: vec![0; cells],
            details: details.then(|| vec![None; cells]),
            column_max: vec![0; columns.count],
            events: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.buckets.rows()
    }

    pub fn add(&mut self, s: &Sample) {
        let (col, row) = (self.columns.column(s.end), self.buckets.row(s.ns));
        let cell = col * self.rows() + row;
        self.counts[cell] += 1;
        if let Some(d) = self.details.as_mut() {
            d[cell].get_or_insert_with(Default::default).add(s);
        }
        self.column_max[col] = self.column_max[col].max(s.ns);
        self.events += 1;
        self.sum_ns = self.sum_ns.saturating_add(s.ns);
        self.min_ns = self.min_ns.min(s.ns);
        self.max_ns = self.max_ns.max(s.ns);
    }

    pub fn count(&self, col: usize, row: usize) -> u64 {
        self.counts[col * self.rows() + row]
    }

    pub fn detail(&self, col: usize, row: usize) -> Option<&CellDetail> {
        self.details.as_ref()?.get(col * self.rows() + row)?.as_deref()
    }

    /// Rows that hold any event: (lowest, highest).
    pub fn used_rows(&self) -> Option<(usize, usize)> {
        let rows = self.rows();
        let mut lo = usize::MAX;
        let mut hi = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 {
                lo = lo.min(i % rows);
                hi = hi.max(i % rows);
            }
        }
        (lo != usize::MAX).then_some((lo, hi))
    }

    /// Events per row, over every column.
    pub fn row_totals(&self) -> Vec<u64> {
        let rows = self.rows();
        let mut out = vec![0u64; rows];
        for (i, &n) in self.counts.iter().enumerate() {
            out[i % rows] += n;
        }
        out
    }

    /// Events per row of column `col`.
    pub fn column(&self, col: usize) -> &[u64] {
        let rows = self.rows();
        &self.counts[col * rows..(col + 1) * rows]
    }

    pub fn max_cell(&self) -> u64 {
        self.counts.iter().copied().max().unwrap_or(0)
    }
}

/// The latency below which a share `q` (0..=1) of a histogram's events fall, at bucket
/// resolution: the upper edge of the bucket that holds the q-th event (0 when empty).
pub fn quantile(buckets: Buckets, rows: &[u64], q: f64) -> u64 {
    let total: u64 = rows.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (row, &n) in rows.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return buckets.upper(row);
        }
    }
    buckets.upper(rows.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_cover_every_value() {
        let b = Buckets::new(4);
        // 1 ms = 1_000_000 ns: 2^19 = 524288 ≤ 1e6 < 2^20, in the quarter [917504, 1048576).
        assert_eq!(b.row(1_000_000), 19 * 4 + 3);
        assert_eq!((b.lower(19 * 4 + 3), b.upper(19 * 4 + 3)), (917_504, 1_048_576));
        for ns in (2u64..300).chain([999, 1_000_000, 20_000_000, 123_456_789_012]) {
            let r = b.row(ns);
            assert!(b.lower(r) <= ns && ns < b.upper(r), "{ns} in row {r}: [{}, {})", b.lower(r), b.upper(r));
        }
        assert_eq!(b.row(u64::MAX), b.rows() - 1);
        let b1 = Buckets::new(1);
        assert_eq!((b1.row(1 << 20), b1.lower(20), b1.upper(20)), (20, 1 << 20, 1 << 21));
    }

    #[test]
    fn columns_take_round_widths_and_clamp_events_outside() {
        let c = Columns::covering(1_000, 10_000_001_000, None, None, 200);
        assert_eq!((c.width_ns, c.count), (50_000_000, 200));
        assert_eq!((c.column(0), c.column(1_000 + 75_000_000), c.column(u64::MAX)), (0, 1, 199));
        assert_eq!(Columns::covering(0, 1_000, Some(300), None, 200).count, 4);
        assert_eq!(Columns::covering(0, 1_000, None, Some(3), 200).width_ns, 334);
        assert_eq!((round_width(3), round_width(6), round_width(11)), (5, 10, 20));
    }

    #[test]
    fn cells_keep_their_top_contributors_and_longest_events() {
        let mut g = Grid::new(Columns { start_ns: 0, width_ns: 10, count: 2 }, Buckets::new(1), true);
        let s = |tid: u32, ns: u64| Sample {
            metric: crate::correlate::Metric::Runq,
            end: 5,
            ns,
            tid,
            pid: 1,
            cpu: 0,
            task: None,
            stacks: crate::correlate::samples::NO_STACKS,
            waker: None,
        };
        for (tid, ns) in [(7, 1024), (7, 1100), (8, 1500), (7, 2100), (9, 1030), (7, 1050)] {
            g.add(&s(tid, ns));
        }
        let row = g.buckets.row(1024);
        assert_eq!(g.count(0, row), 5, "2100 is in the next row");
        let d = g.detail(0, row).unwrap();
        assert_eq!(d.top[0].0.tid, 7, "{:?}", d.top);
        assert_eq!(d.longest.iter().map(|s| s.ns).collect::<Vec<_>>(), vec![1500, 1100, 1050]);
        assert_eq!((g.events, g.max_ns, g.min_ns, g.column_max[0]), (6, 2100, 1024, 2100));
        assert_eq!(quantile(g.buckets, &g.row_totals(), 0.5), g.buckets.upper(row));
    }
}
