//! `jetline run`: runs until SIGTERM or SIGINT, then lets in-flight events
//! settle and exits 0.

use std::{path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;

use crate::{Config, RunError, sink::custom::CustomSinks};

/// Runs `config`, read from `path`: the file is read again when a rebuilt
/// generation goes live, so the rules it was rebuilt with apply from then.
pub async fn run(path: PathBuf, config: Config) -> Result<(), RunError> {
    let prepared = crate::prepare(config)?;
    let reload = Arc::new(move || {
        crate::config::load(&path)
            .map_err(RunError::Config)
            .and_then(crate::prepare)
    });
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutting down: finishing events in flight");
        signal.cancel();
    });
    crate::run_reloading(prepared, shutdown, CustomSinks::default(), reload).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
