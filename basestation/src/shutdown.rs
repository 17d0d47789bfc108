//! One signal for every task: SIGTERM or Ctrl-C cancels a token that the accept loop, every
//! connection and every resource task watch.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT. Returns when the signal arrived.
pub async fn on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the station");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
        _ = token.cancelled() => return,
    }
    token.cancel();
}
