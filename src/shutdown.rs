//! Shutdown: one `watch` channel that turns `true` when the relay stops.
//! Every long-running task selects on [`stopped`] and ends its loop.

use tokio::sync::watch;

/// Resolves once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
