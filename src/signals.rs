//! Signals: SIGINT and SIGTERM stop the daemon (leaving the dataplane in
//! place); SIGHUP is ignored with a log line, since weft reads its flags and
//! environment only at start (restart it to change them).

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Install the handlers now (so that a SIGHUP arriving during start-up
/// cannot kill the process) and return a future that resolves on the first
/// SIGINT or SIGTERM. Needs a tokio runtime.
pub(crate) fn shutdown() -> impl Future<Output = ()> {
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
            // Without signal handlers the default action (exit) still applies.
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => info!("SIGHUP ignored: weft reads its settings only at start; restart it to change them"),
            }
        }
    }
}
