//! sched-trace: where the time of an M:N runtime goes between its scheduler and the kernel's.
//!
//! One module per pipeline stage:
//! - [`record`]: the only part that talks to the kernel (load probes, drain, write the trace);
//! - [`trace`]: the trace file format, its writer and its reader;
//! - [`correlate`]: per-thread (and per-task) timelines rebuilt from a trace;
//! - [`report`]: numbers per thread, process, user task and CPU, as text or JSON;
//! - [`heatmap`]: latency heat maps (time × latency × count) as SVG, HTML, terminal or JSON;
//! - [`flamegraph`]: the trace's stacks joined with tasks and waits, drawn as flame graphs;
//! - [`export`]: the correlated timelines as tracks for Perfetto or the Chrome trace viewer.

pub mod correlate;
pub mod export;
pub mod filter;
pub mod flamegraph;
pub mod heatmap;
pub mod record;
pub mod report;
pub mod trace;
pub mod units;
