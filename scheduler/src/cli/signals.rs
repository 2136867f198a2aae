//! The stop signals every long-running command answers: SIGTERM and SIGINT (Ctrl-C), the first
//! to stop cleanly, a second to stop at once. One place, so `run`, `scheduler`, `server` and
//! `worker` agree.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT, listened to from when this is made.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Starts listening; `None` when the signal handlers cannot be installed (then only
    /// SIGKILL stops the process, as it always can).
    pub fn listen() -> Option<StopSignals> {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some(StopSignals { term, int }),
            _ => None,
        }
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
