//! The NATS connection: authentication and TLS from `nats:`, retried until
//! `connect_timeout`, with the connection state reported to `/readyz` and
//! `jetline_nats_connected`.
//!
//! Only an unreachable server is worth another try: refused credentials,
//! a failed TLS handshake or an unreadable secret file end the attempt at
//! once, with an error that says which. Secrets are read here, from the
//! environment (through the configuration) or their files, and never
//! appear in an error or a log.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerAddr, rustls};

use crate::{config::raw::NatsConfig, telemetry::Readiness};

/// Why no connection to NATS could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("nats.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{key}: cannot read {}: {source}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {} is not valid: {message}", path.display())]
    Credentials {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{url}: the server refused the credentials: {message}")]
    Refused { url: String, message: String },
    #[error("{url}: the server's certificate was not accepted: {message}")]
    ServerCertificate { url: String, message: String },
    #[error(
        "{url}: the server ended the TLS handshake (is nats.tls.cert a valid client certificate it trusts?): {message}"
    )]
    HandshakeRefused { url: String, message: String },
    #[error("{url}: TLS failed: {message}")]
    Tls { url: String, message: String },
    #[error("{url}: not reachable within {}: {message}", humantime::format_duration(*timeout))]
    Unreachable {
        url: String,
        timeout: Duration,
        message: String,
    },
}

impl ConnectError {
    /// Whether the configuration itself is at fault (a secret file missing
    /// or malformed, a bad URL): exit 2, as for other configuration errors.
    pub fn is_configuration(&self) -> bool {
        match self {
            ConnectError::Url { .. }
            | ConnectError::File { .. }
            | ConnectError::Credentials { .. } => true,
            ConnectError::Refused { .. }
            | ConnectError::ServerCertificate { .. }
            | ConnectError::HandshakeRefused { .. }
            | ConnectError::Tls { .. }
            | ConnectError::Unreachable { .. } => false,
        }
    }
}

pub async fn connect(
    config: &NatsConfig,
    readiness: Arc<Readiness>,
) -> Result<async_nats::Client, ConnectError> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let servers = server_list(&config.url)?;
    loop {
        let options = options(config, Arc::clone(&readiness)).await?;
        let error = match options.connect(servers.as_slice()).await {
            Ok(client) => {
                readiness.set_connected(true);
                tracing::info!(url = %config.url, "Connected to NATS");
                return Ok(client);
            }
            Err(error) => classify(&config.url, config.connect_timeout, &error),
        };
        match error {
            ConnectError::Unreachable { message, .. } if tokio::time::Instant::now() < deadline => {
                tracing::warn!(url = %config.url, error = %message, "NATS not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return Err(other),
        }
    }
}

/// `nats.url` as servers (validated with the configuration already).
fn server_list(urls: &str) -> Result<Vec<ServerAddr>, ConnectError> {
    crate::config::raw::server_list(urls).map_err(|message| ConnectError::Url {
        url: urls.to_owned(),
        message,
    })
}

/// What a failed attempt means: the server refused us (credentials, TLS),
/// or it could not be reached (worth another try).
fn classify(url: &str, timeout: Duration, error: &async_nats::ConnectError) -> ConnectError {
    let url = url.to_owned();
    let message = error.to_string();
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            return ConnectError::Refused { url, message };
        }
        ConnectErrorKind::Tls => return ConnectError::Tls { url, message },
        ConnectErrorKind::ServerParse => return ConnectError::Url { url, message },
        ConnectErrorKind::Dns
        | ConnectErrorKind::TimedOut
        | ConnectErrorKind::Io
        | ConnectErrorKind::MaxReconnects => {}
    }
    // A handshake failure reaches us as an IO error wrapping rustls' own.
    match tls_cause(error) {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => ConnectError::ServerCertificate {
            url,
            message: tls.to_string(),
        },
        Some(tls @ rustls::Error::AlertReceived(_)) => ConnectError::HandshakeRefused {
            url,
            message: tls.to_string(),
        },
        Some(tls) => ConnectError::Tls {
            url,
            message: tls.to_string(),
        },
        None => ConnectError::Unreachable {
            url,
            timeout,
            message,
        },
    }
}

/// The rustls error somewhere in the chain of causes, if there is one.
fn tls_cause(error: &async_nats::ConnectError) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}

/// A secret file's content, without the line break that editors add.
fn read_secret(key: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| ConnectError::File {
            key,
            path: path.to_owned(),
            source,
        })
}

/// A file that must exist for TLS: read here so that a missing one is named
/// by its key, not reported as a TLS failure.
fn check_readable(key: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ConnectError::File {
            key,
            path: path.to_owned(),
            source,
        })
}

async fn options(
    config: &NatsConfig,
    readiness: Arc<Readiness>,
) -> Result<ConnectOptions, ConnectError> {
    let mut options = if let Some(path) = &config.creds_file {
        // As written: async-nats' parser wants the line break after the seed.
        let creds = std::fs::read_to_string(path).map_err(|source| ConnectError::File {
            key: "nats.creds_file",
            path: path.clone(),
            source,
        })?;
        ConnectOptions::with_credentials(&creds).map_err(|err| ConnectError::Credentials {
            key: "nats.creds_file",
            path: path.clone(),
            message: err.to_string(),
        })?
    } else if let Some(path) = &config.nkey_seed_file {
        let seed = read_secret("nats.nkey_seed_file", path)?;
        // Checked here: async-nats would only fail at the handshake, as
        // "failed signing nonce". The error does not quote the seed.
        if let Err(err) = nkeys::KeyPair::from_seed(&seed) {
            return Err(ConnectError::Credentials {
                key: "nats.nkey_seed_file",
                path: path.clone(),
                message: format!("not an nkey seed ({:?})", err.kind()),
            });
        }
        ConnectOptions::with_nkey(seed)
    } else if let Some(user) = &config.user {
        let password = match (&config.password, &config.password_file) {
            (Some(secret), _) => secret.0.clone(),
            (None, Some(path)) => read_secret("nats.password_file", path)?,
            (None, None) => String::new(),
        };
        ConnectOptions::with_user_and_password(user.clone(), password)
    } else if let Some(secret) = &config.token {
        ConnectOptions::with_token(secret.0.clone())
    } else if let Some(path) = &config.token_file {
        ConnectOptions::with_token(read_secret("nats.token_file", path)?)
    } else {
        ConnectOptions::new()
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            check_readable("nats.tls.ca", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            check_readable("nats.tls.cert", cert)?;
            check_readable("nats.tls.key", key)?;
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

/// The KV bucket `config.bucket`, created with `config` when missing (an
/// existing one is used as it is); the server's refusal as text.
pub async fn key_value(
    jetstream: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, String> {
    match jetstream.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => jetstream
            .create_key_value(config)
            .await
            .map_err(|err| err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_server_is_worth_another_try() {
        let timeout = Duration::from_secs(1);
        let refused = async_nats::ConnectError::new(ConnectErrorKind::AuthorizationViolation);
        assert!(matches!(
            classify("nats://x", timeout, &refused),
            ConnectError::Refused { .. }
        ));
        let handshake = async_nats::ConnectError::with_source(
            ConnectErrorKind::Io,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
        );
        assert!(matches!(
            classify("nats://x", timeout, &handshake),
            ConnectError::ServerCertificate { .. }
        ));
        let alert = async_nats::ConnectError::with_source(
            ConnectErrorKind::Io,
            std::io::Error::other(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired,
            )),
        );
        assert!(matches!(
            classify("nats://x", timeout, &alert),
            ConnectError::HandshakeRefused { .. }
        ));
        let refused_tcp = async_nats::ConnectError::with_source(
            ConnectErrorKind::Io,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert!(matches!(
            classify("nats://x", timeout, &refused_tcp),
            ConnectError::Unreachable { .. }
        ));
    }
}
