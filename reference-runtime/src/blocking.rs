//! Blocking sections: Go's `entersyscallblock` + `handoffp`, and `exitsyscall`.

use crate::probes::{self, NONE};
use crate::sched;

/// Runs `f`, which may block (a syscall, a lock, a sleep), on the current M after handing off
/// its P: before `f` the M releases the P and, if there is runnable work, another M takes it;
/// after `f` the M takes its old P if it is idle, else any idle P, else waits until one is given
/// to it (the task is then runnable, waiting for a P). The task stays on its M throughout: it is
/// stackless and `f` runs inside its poll.
///
/// Outside a runtime task (or nested in another blocking section) `f` just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let Some(ctx) = sched::current() else { return f() };
    let shared = ctx.shared.clone();
    let log = shared.log.as_deref();
    let Some(p) = ctx.p() else { return f() };
    let task = sched::current_task_id();
    let m = ctx.m_id();
    probes::block_enter(log, task, m, p as u64);
    let released = shared.enter_blocking(&ctx);
    // Reacquires a P even if `f` panics (the panic then reaches the task's catch with a P held).
    struct Reacquire<'a> {
        ctx: &'a sched::Context,
        p: Option<usize>,
        task: u64,
    }
    impl Drop for Reacquire<'_> {
        fn drop(&mut self) {
            let Some(old) = self.p else { return };
            let shared = &self.ctx.shared;
            let now = shared.exit_blocking(self.ctx, old);
            probes::block_exit(
                shared.log.as_deref(),
                self.task,
                self.ctx.m_id(),
                now.map_or(NONE, |p| p as u64),
            );
        }
    }
    let _guard = Reacquire { ctx: &ctx, p: released, task };
    f()
}
