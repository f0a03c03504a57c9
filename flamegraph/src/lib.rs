//! Stacks → symbols → folded stacks → flame graphs.
//!
//! [`symbolize`] names the addresses of user stacks through the executable mappings a recording
//! kept (so that a process gone since, or a trace read on another machine with the binaries at
//! hand, still resolves) and of kernel stacks through the kernel functions the recording
//! resolved; [`fold`] turns weighted stacks into the folded lines FlameGraph and inferno read,
//! with frames of the caller's own (process, thread, task) at the root and a reason frame at the
//! leaf; [`render`] draws them with inferno, differential flame graphs included.

pub mod fold;
pub mod render;
pub mod symbolize;

pub use fold::{Folder, Stack};
pub use render::{FlameKind, render, render_diff};
pub use symbolize::{Mapping, SymbolStats, Symbolizer, kernel_symbols};
