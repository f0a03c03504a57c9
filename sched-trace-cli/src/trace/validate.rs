//! What the reader checks of every event before an analysis sees it.
//!
//! A chunk can be whole (lengths and checksum right) and still hold records no kernel wrote: a
//! CPU the recording's host did not have, a thread id beyond the kernel's limit, a timestamp
//! before one already handed out. Analyses index per-CPU tables by CPU and subtract timestamps,
//! so the reader gives them only events that fit, and counts the rest where the report shows
//! them: an event with an impossible id is dropped; an event that runs back in time is handed
//! out at the latest time already handed out (it happened no later than that), so that time
//! never runs backwards for anything after the reader.

use serde::Serialize;

use super::{Event, EventKind};

/// Largest thread id a Linux kernel hands out (`PID_MAX_LIMIT` on 64-bit kernels).
pub const PID_MAX_LIMIT: u32 = 1 << 22;

/// CPUs an event may name when the header does not say (the record's CPU field is 16 bits).
const CPU_LIMIT: u32 = 1 << 16;

/// Events the reader did not hand out as the file had them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Earlier than an event already handed out (by more than the reorder window): handed out
    /// at the time of that event instead.
    pub backwards_time: u64,
    /// Naming a CPU the host does not have: dropped.
    pub bad_cpu: u64,
    /// Naming a thread or process id no kernel hands out: dropped.
    pub bad_id: u64,
}

impl Rejected {
    /// Events dropped (the backwards ones are kept, at another time).
    pub fn dropped(&self) -> u64 {
        self.bad_cpu + self.bad_id
    }

    pub fn total(&self) -> u64 {
        self.backwards_time + self.dropped()
    }
}

/// The bounds events of one recording must keep.
#[derive(Clone, Copy, Debug)]
pub struct EventLimits {
    cpus: u32,
}

/// Why an event was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    Cpu,
    Id,
}

impl EventLimits {
    /// Limits for a recording whose header says it had `possible_cpus` CPUs (0: not known).
    pub fn new(possible_cpus: u32) -> Self {
        let cpus = if possible_cpus == 0 || possible_cpus > CPU_LIMIT { CPU_LIMIT } else { possible_cpus };
        EventLimits { cpus }
    }

    /// Number of CPUs an event may name: per-CPU tables never need more entries.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Whether `e` names only CPUs and ids that can exist (an impossible CPU counts first).
    pub fn check(&self, e: &Event) -> Result<(), Unfit> {
        // The largest CPU and id the event names, then one comparison each: this runs for
        // every event on the reading thread.
        let (cpu, id) = match &e.kind {
            EventKind::Switch(s) => (0, s.next_tid.max(s.next_pid)),
            EventKind::Waking(w) | EventKind::Wakeup(w) | EventKind::WakeupNew(w) => {
                (w.cpu, w.tid.max(w.pid))
            }
            EventKind::Migrate { tid, pid, orig_cpu, dest_cpu } => {
                ((*orig_cpu).max(*dest_cpu), (*tid).max(*pid))
            }
            EventKind::Fork { child_tid, child_pid, .. } => (0, (*child_tid).max(*child_pid)),
            EventKind::Exec { old_tid, .. } => (0, *old_tid),
            _ => (0, 0),
        };
        if cpu.max(e.cpu as u32) >= self.cpus {
            Err(Unfit::Cpu)
        } else if id.max(e.tid).max(e.pid) > PID_MAX_LIMIT {
            Err(Unfit::Id)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::{Decoded, decode};
    use crate::trace::synthetic as syn;
    use sched_trace_abi::kind;

    fn event(raw: Vec<u8>) -> Event {
        match decode(&raw).unwrap() {
            Decoded::Event(e, _) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cpus_and_ids_beyond_the_hosts_are_unfit() {
        let l = EventLimits::new(2);
        assert_eq!(l.check(&event(syn::switch(1, 1, (5, 5), (6, 6), 0, false))), Ok(()));
        assert_eq!(l.check(&event(syn::switch(1, 2, (5, 5), (6, 6), 0, false))), Err(Unfit::Cpu));
        assert_eq!(l.check(&event(syn::switch(1, 0, (5, 5), (u32::MAX, 6), 0, false))), Err(Unfit::Id));
        assert_eq!(l.check(&event(syn::migrate(1, 0, (5, 5), 0, 7))), Err(Unfit::Cpu));
        assert_eq!(
            l.check(&event(syn::wake(kind::WAKEUP, 1, 0, (1, 1), (PID_MAX_LIMIT + 1, 1)))),
            Err(Unfit::Id)
        );
        // A header that does not say, or says something absurd, still bounds CPUs by 16 bits.
        assert_eq!(EventLimits::new(0).cpus(), 1 << 16);
        assert_eq!(EventLimits::new(u32::MAX).cpus(), 1 << 16);
    }
}
