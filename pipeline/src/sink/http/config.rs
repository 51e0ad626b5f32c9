//! The `type: http` sink block: the webhook URL, its headers (secret ones
//! from the environment) and the request timeout. Each field's doc comment is
//! its user documentation.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::config::{ConfigError, raw::duration};

/// POSTs each event as JSON to a webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The `http://` or `https://` URL each event is POSTed to.
    pub url: String,
    /// Headers sent with every request (not secrets: see `headers_env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose value is read from an environment variable at start-up,
    /// e.g. `{ Authorization: NOTIFY_TOKEN }`.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Time allowed for one request, answer included (default 10s).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Headers Jetline sets itself.
const RESERVED_HEADERS: &[&str] = &["content-type", "idempotency-key", "content-length"];

impl HttpSinkConfig {
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                if !url.password().unwrap_or_default().is_empty() {
                    errors.push(ConfigError::new(
                        format!("{path}.url"),
                        "must not hold a password: use headers_env",
                    ));
                }
            }
            Ok(url) => errors.push(ConfigError::new(
                format!("{path}.url"),
                format!("unsupported scheme {:?} (http or https)", url.scheme()),
            )),
            Err(err) => errors.push(ConfigError::new(
                format!("{path}.url"),
                format!("invalid URL: {err}"),
            )),
        }
        if self.timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must be above 0",
            ));
        }
        let names = self
            .headers
            .keys()
            .map(|name| ("headers", name))
            .chain(self.headers_env.keys().map(|name| ("headers_env", name)));
        for (section, name) in names {
            let key = format!("{path}.{section}.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::new(key, "invalid header name"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(ConfigError::new(key, "set by Jetline itself"));
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                errors.push(ConfigError::new(
                    format!("{path}.headers.{name}"),
                    "invalid header value",
                ));
            }
        }
        for (name, variable) in &self.headers_env {
            if variable.is_empty() || variable.contains('=') {
                errors.push(ConfigError::new(
                    format!("{path}.headers_env.{name}"),
                    format!("{variable:?} is not an environment variable name"),
                ));
            }
            if self.headers.contains_key(name) {
                errors.push(ConfigError::new(
                    format!("{path}.headers_env.{name}"),
                    "also set in headers",
                ));
            }
        }
    }
}
