//! The NATS connection: authentication and TLS from `nats:`, retried until
//! `connect_timeout`, with the connection state reported to `/readyz` and
//! `jetline_nats_connected`.

use std::{sync::Arc, time::Duration};

use async_nats::{ConnectOptions, Event};

use crate::{RunError, config::raw::NatsConfig, telemetry::Readiness};

pub async fn connect(
    config: &NatsConfig,
    readiness: Arc<Readiness>,
) -> Result<async_nats::Client, RunError> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let servers = crate::config::raw::server_list(&config.url)
        .map_err(|err| RunError::Connect(format!("nats.url {err}")))?;
    loop {
        let options = options(config, Arc::clone(&readiness)).await?;
        match options.connect(servers.as_slice()).await {
            Ok(client) => {
                readiness.set_connected(true);
                tracing::info!(url = %config.url, "Connected to NATS");
                return Ok(client);
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(url = %config.url, error = %error, "NATS not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(RunError::Connect(format!("{}: {error}", config.url))),
        }
    }
}

async fn options(
    config: &NatsConfig,
    readiness: Arc<Readiness>,
) -> Result<ConnectOptions, RunError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|err| RunError::Connect(format!("cannot read {}: {err}", path.display())))
    };
    let mut options = if let Some(path) = &config.creds_file {
        ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|err| RunError::Connect(format!("cannot read {}: {err}", path.display())))?
    } else if let Some(path) = &config.nkey_seed_file {
        ConnectOptions::with_nkey(read(path)?)
    } else if let Some(user) = &config.user {
        let password = match (&config.password, &config.password_file) {
            (Some(secret), _) => secret.0.clone(),
            (None, Some(path)) => read(path)?,
            (None, None) => String::new(),
        };
        ConnectOptions::with_user_and_password(user.clone(), password)
    } else if let Some(secret) = &config.token {
        ConnectOptions::with_token(secret.0.clone())
    } else if let Some(path) = &config.token_file {
        ConnectOptions::with_token(read(path)?)
    } else {
        ConnectOptions::new()
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options
        .name(&config.name)
        .connection_timeout(config.connect_timeout.min(Duration::from_secs(5)))
        .event_callback(move |event| {
            let readiness = Arc::clone(&readiness);
            async move {
                match event {
                    Event::Connected => readiness.set_connected(true),
                    Event::Disconnected => {
                        readiness.set_connected(false);
                        tracing::warn!("Disconnected from NATS; reconnecting");
                    }
                    other => tracing::warn!(event = %other, "NATS connection event"),
                }
            }
        }))
}
