//! The HTTP sink: POSTs each event (the envelope in JSON, payload as an
//! object) with `Idempotency-Key: <event_id>` and the correlation headers,
//! and turns the answer into a result: 2xx applied; 408, 429, 5xx and
//! network errors transient (with the server's `Retry-After`); any other
//! status permanent.
//!
//! The receiver deduplicates by the idempotency key: Jetline delivers at
//! least once and sends the same key on every attempt.

use std::time::{Duration, SystemTime};

use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
    redirect,
};

use super::config::{HttpSinkConfig, check_url};
use crate::sink::{Applied, Event, Sink, SinkError, jetstream::header, value::ValueError};

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Every event is sent with this method.
pub const METHOD: reqwest::Method = reqwest::Method::POST;

/// Longest part of an error answer kept for the dead letter.
const MAX_BODY_SNIPPET: usize = 512;

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

impl HttpSink {
    /// Reads the `headers_env` variables and builds the client.
    pub fn new(name: &str, config: &HttpSinkConfig) -> Result<Self, SinkError> {
        let setup = |message: String| SinkError::Setup(format!("sinks.{name}: {message}"));
        let url = match (&config.url, &config.url_env) {
            (Some(url), _) => check_url(url).map_err(setup)?,
            (None, Some(variable)) => std::env::var(variable)
                .ok()
                .and_then(|text| check_url(&text).ok())
                .ok_or_else(|| SinkError::Environment {
                    variable: variable.clone(),
                    key: format!("sinks.{name}.url_env"),
                })?,
            (None, None) => return Err(setup("no url".into())),
        };
        let headers = configured_headers(name, config, |variable| std::env::var(variable).ok())?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirected POST turns into a GET: treat it as an answer.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("jetline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| setup(err.to_string()))?;
        Ok(Self {
            client,
            url,
            headers,
        })
    }
}

/// The headers sink `name` sends with every request: `headers`, and each of
/// `headers_env` with the value `variable` gives for its variable, marked
/// sensitive (a credential).
pub fn configured_headers(
    name: &str,
    config: &HttpSinkConfig,
    variable: impl Fn(&str) -> Option<String>,
) -> Result<HeaderMap, SinkError> {
    let setup = |message: String| SinkError::Setup(format!("sinks.{name}: {message}"));
    let mut headers = HeaderMap::new();
    for (name_text, value) in &config.headers {
        let header_name = HeaderName::from_bytes(name_text.as_bytes())
            .map_err(|err| setup(format!("header {name_text}: {err}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|err| setup(format!("header {name_text}: {err}")))?;
        headers.insert(header_name, value);
    }
    for (name_text, variable_name) in &config.headers_env {
        let environment_error = || SinkError::Environment {
            variable: variable_name.clone(),
            key: format!("sinks.{name}.headers_env.{name_text}"),
        };
        let header_name = HeaderName::from_bytes(name_text.as_bytes())
            .map_err(|err| setup(format!("header {name_text}: {err}")))?;
        let mut value = variable(variable_name)
            .and_then(|text| HeaderValue::from_str(&text).ok())
            .ok_or_else(environment_error)?;
        value.set_sensitive(true);
        headers.insert(header_name, value);
    }
    Ok(headers)
}

/// An event's request headers: `configured` (see [`configured_headers`]),
/// then `Content-Type`, the idempotency key and the correlation headers.
pub fn request_headers(configured: &HeaderMap, event: &Event) -> Result<HeaderMap, SinkError> {
    let envelope = &event.envelope;
    let mut headers = configured.clone();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let key = HeaderValue::from_bytes(envelope.event_id.as_bytes()).map_err(|_| ValueError {
        path: "event_id".into(),
        problem: "cannot be sent as an HTTP header".into(),
    })?;
    headers.insert(IDEMPOTENCY_KEY, key);
    let seq = event.delivery.stream_seq.to_string();
    let version = envelope.schema_version.to_string();
    let optional = [
        (header::EVENT_TYPE, envelope.event_type.as_str()),
        (header::SCHEMA_VERSION, version.as_str()),
        (header::AGGREGATE_TYPE, envelope.aggregate_type.as_str()),
        (header::AGGREGATE_ID, envelope.aggregate_id.as_str()),
        (header::CORRELATION_ID, envelope.correlation_id.as_str()),
        (header::CAUSATION_ID, envelope.causation_id.as_str()),
        (header::SOURCE_STREAM, event.delivery.stream.as_ref()),
        (header::SOURCE_SEQ, seq.as_str()),
    ];
    let carried = event.trace_headers();
    // A value that cannot be a header (a control character) is left out
    // rather than failing the event.
    for (name, value) in optional.into_iter().chain(carried) {
        if value.is_empty() {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
    Ok(headers)
}

impl Sink for HttpSink {
    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        let headers = request_headers(&self.headers, event)?;
        // Serializing a `serde_json::Value` cannot fail.
        let body = serde_json::to_vec(&event.envelope.to_json()?).unwrap_or_default();
        let response = self
            .client
            .request(METHOD, self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            // The URL may come from `url_env` with a secret in it.
            .map_err(|err| request_error(&err.without_url()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = body_snippet(response).await;
        classify(status, retry_after, body).map(|()| Applied::Written)
    }
}

/// The answer's meaning: 2xx done; 408, 429 and 5xx worth another try;
/// anything else a rejection of the event.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Err(SinkError::HttpUnavailable {
            status: code,
            retry_after,
        });
    }
    Err(SinkError::HttpRejected { status: code, body })
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

fn request_error(error: &reqwest::Error) -> SinkError {
    let message = crate::sink::with_causes(error);
    if error.is_timeout() {
        SinkError::Timeout(message)
    } else {
        SinkError::Connection(message)
    }
}

/// The start of an answer's body, read without holding more than needed.
async fn body_snippet(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY_SNIPPET {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(MAX_BODY_SNIPPET);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ErrorClass;

    #[test]
    fn statuses_classify() {
        let cases = [
            (200, None),
            (204, None),
            (400, Some(ErrorClass::Permanent)),
            (401, Some(ErrorClass::Permanent)),
            (404, Some(ErrorClass::Permanent)),
            (409, Some(ErrorClass::Permanent)),
            (302, Some(ErrorClass::Permanent)),
            (408, Some(ErrorClass::Transient)),
            (429, Some(ErrorClass::Transient)),
            (500, Some(ErrorClass::Transient)),
            (503, Some(ErrorClass::Transient)),
        ];
        for (status, expected) in cases {
            let status = StatusCode::from_u16(status).expect("a status");
            let class = classify(status, None, String::new())
                .err()
                .map(|error| error.class());
            assert_eq!(class, expected, "{status}");
        }
        let error = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(2)),
            String::new(),
        )
        .expect_err("503");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("a date");
        let cases = [
            ("3", Some(Duration::from_secs(3))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:49:47 GMT",
                Some(Duration::from_secs(10)),
            ),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(Duration::ZERO)),
            ("soon", None),
            ("-1", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        }
    }
}
