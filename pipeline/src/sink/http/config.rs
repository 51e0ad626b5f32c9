//! The `type: http` sink block: the webhook URL (from the file, or from the
//! environment when it holds a secret), its headers (secret ones from the
//! environment) and the request timeout. Each field's doc comment is its
//! user documentation.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::config::{ConfigError, raw::duration};

/// POSTs each event as JSON to a webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The `http://` or `https://` URL each event is POSTed to.
    pub url: Option<String>,
    /// Instead of `url`: the environment variable holding it, for URLs that
    /// carry a secret.
    pub url_env: Option<String>,
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

/// Headers that carry credentials: only from the environment.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

impl HttpSinkConfig {
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        match (&self.url, &self.url_env) {
            (Some(url), None) => {
                if let Err(message) = check_url(url) {
                    errors.push(ConfigError::new(format!("{path}.url"), message));
                }
            }
            (None, Some(variable)) => {
                if !is_variable_name(variable) {
                    errors.push(ConfigError::new(
                        format!("{path}.url_env"),
                        format!("{variable:?} is not an environment variable name"),
                    ));
                }
            }
            (Some(_), Some(_)) => errors.push(ConfigError::new(
                format!("{path}.url_env"),
                "give url or url_env, not both",
            )),
            (None, None) => errors.push(ConfigError::new(
                format!("{path}.url"),
                "missing: give url or url_env",
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
            } else if section == "headers"
                && SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str())
            {
                errors.push(ConfigError::new(
                    key,
                    "a credential: set it with headers_env",
                ));
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
            if !is_variable_name(variable) {
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

/// A webhook URL: http or https, without a password.
pub fn check_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|err| format!("invalid URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?} (http or https)",
            url.scheme()
        ));
    }
    if url.password().is_some_and(|password| !password.is_empty()) {
        return Err("must not hold a password: use url_env or headers_env".into());
    }
    Ok(url)
}

/// A name `std::env::var` can look up: letters, digits and '_', not
/// starting with a digit.
pub fn is_variable_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
