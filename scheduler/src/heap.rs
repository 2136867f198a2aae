//! Giving freed heap memory back to the system once runs end.
//!
//! glibc's allocator keeps what a program frees for reuse, in one arena per thread that
//! allocated (up to eight per core), and returns little of it on its own. A scheduler that had
//! just driven a 5,000-step run had freed nearly all of that run's records, events and tasks,
//! yet stayed at 220 MiB resident (BENCHMARKS.md, "Scheduler memory"). `malloc_trim` hands the
//! free pages of every arena back. It walks the heap, so it runs at most once a second, off
//! the runtime's threads, after a run ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a run ends the trim waits, so that runs ending together share one.
const SETTLE: Duration = Duration::from_secs(1);

static PENDING: AtomicBool = AtomicBool::new(false);

/// Trims the heap a moment from now (once for every run that ends meanwhile). Needs a tokio
/// runtime.
pub fn release_soon() {
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(SETTLE).await;
        PENDING.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(release_now).await;
    });
}

/// Gives the free pages of the heap back to the system now.
pub fn release_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds as free; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
