//! Dead letters: the reasons, the `Jetline-Dlq-*` headers, and publishing an
//! entry to the dead-letter stream (created if missing).
//!
//! An entry holds the original body and headers unchanged, except that the
//! server-interpreted `Nats-*` headers are kept under `Jetline-Dlq-Orig-*`
//! (a producer's `Nats-Msg-Id` or `Nats-Expected-*` would otherwise make the
//! dead-letter publish deduplicate or fail). Its own `Nats-Msg-Id` is
//! `<sink>:<stream>:<seq>`: one event has one entry per sink, also when a
//! dead-letter publish timed out after the server stored it and the
//! redelivered event is dead-lettered again (within the stream's duplicate
//! window).

pub mod parked;
mod store;

use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

pub use store::{Entry, Filter, RedriveTarget, is_redriven, redrive_sink};

/// Why an event was dead-lettered: one fixed snake_case name each, used in
/// the `Jetline-Dlq-Reason` header and in metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    InvalidEnvelope,
    UnknownType,
    InvalidPayload,
    UpcastFailed,
    SinkRejected,
    MaxAttempts,
    ParkedAfterFailure,
    TooLarge,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::InvalidEnvelope,
        DeadLetterReason::UnknownType,
        DeadLetterReason::InvalidPayload,
        DeadLetterReason::UpcastFailed,
        DeadLetterReason::SinkRejected,
        DeadLetterReason::MaxAttempts,
        DeadLetterReason::ParkedAfterFailure,
        DeadLetterReason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidEnvelope => "invalid_envelope",
            DeadLetterReason::UnknownType => "unknown_type",
            DeadLetterReason::InvalidPayload => "invalid_payload",
            DeadLetterReason::UpcastFailed => "upcast_failed",
            DeadLetterReason::SinkRejected => "sink_rejected",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::ParkedAfterFailure => "parked_after_failure",
            DeadLetterReason::TooLarge => "too_large",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

/// Header names of a dead-letter entry.
pub mod header {
    pub const REASON: &str = "Jetline-Dlq-Reason";
    pub const ERROR: &str = "Jetline-Dlq-Error";
    pub const SINK: &str = "Jetline-Dlq-Sink";
    pub const SOURCE_STREAM: &str = "Jetline-Dlq-Source-Stream";
    pub const SOURCE_SUBJECT: &str = "Jetline-Dlq-Source-Subject";
    pub const SOURCE_SEQ: &str = "Jetline-Dlq-Source-Seq";
    pub const TIME: &str = "Jetline-Dlq-Time";
    pub const ATTEMPTS: &str = "Jetline-Dlq-Attempts";
    /// On an entry whose original was too large to store whole: its length
    /// in bytes (the entry keeps its first 64 KiB).
    pub const TRUNCATED_FROM: &str = "Jetline-Dlq-Truncated-From";
    /// Prefix under which a producer's `Nats-*` headers are kept.
    pub const ORIGINAL_PREFIX: &str = "Jetline-Dlq-Orig-";
    /// Prefix of every header Jetline adds to an entry.
    pub const PREFIX: &str = "Jetline-Dlq-";
    /// On a redriven event: the earlier dead-letterings, `; `-separated.
    pub const HISTORY: &str = "Jetline-Dlq-History";
    /// On a redriven event: the only sink that applies it.
    pub const REDRIVE_SINK: &str = "Jetline-Redrive-Sink";
}

/// One event to dead-letter, with where it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub sink: &'a str,
    pub reason: DeadLetterReason,
    pub error: &'a str,
    pub source_stream: &'a str,
    pub source_subject: &'a str,
    pub source_seq: u64,
    pub attempts: u32,
    pub headers: Option<&'a HeaderMap>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot create or read dead-letter stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("dead-letter publish failed: {0}")]
    Publish(String),
    #[error("no dead letter at sequence {0}")]
    NotFound(u64),
    #[error("entry {seq} has no {header} header")]
    Incomplete { seq: u64, header: &'static str },
    #[error("redrive of entry {seq} failed: {message}")]
    Redrive { seq: u64, message: String },
}

/// Publishes dead letters to `<subject_prefix>.<sink>.<reason>`.
#[derive(Clone)]
pub struct DeadLetters {
    jetstream: jetstream::Context,
    stream: String,
    subject_prefix: String,
}

/// How much of an original too large to store beside its headers is kept.
const TRUNCATED_BODY_LEN: usize = 64 * 1024;

/// Longest error text kept in a header; headers are not for essays.
const MAX_ERROR_LEN: usize = 1024;

impl DeadLetters {
    pub fn new(jetstream: jetstream::Context, stream: &str, subject_prefix: &str) -> Self {
        Self {
            jetstream,
            stream: stream.to_owned(),
            subject_prefix: subject_prefix.to_owned(),
        }
    }

    /// Creates the dead-letter stream when it does not exist.
    pub async fn ensure_stream(&self) -> Result<(), DeadLetterError> {
        self.jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.subject_prefix)],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|err| DeadLetterError::Stream {
                stream: self.stream.clone(),
                message: err.to_string(),
            })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// Stores one entry and waits for the stream to acknowledge it.
    pub async fn publish(&self, letter: &DeadLetter<'_>) -> Result<(), DeadLetterError> {
        let subject = format!(
            "{}.{}.{}",
            self.subject_prefix,
            letter.sink,
            letter.reason.as_str()
        );
        let headers = entry_headers(letter);
        let stored = self.store(&subject, &headers, letter).await;
        match stored {
            // Deleted under a running process: created again, as at start.
            Err(error) if error.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                self.ensure_stream().await?;
                self.store(&subject, &headers, letter)
                    .await
                    .map_err(|error| DeadLetterError::Publish(error.to_string()))
            }
            // The original with the entry's headers is over the server's
            // limit: keep its start, and say how long it was.
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
            {
                let mut headers = headers;
                headers.insert(
                    header::TRUNCATED_FROM,
                    letter.body.len().to_string().as_str(),
                );
                let cut = DeadLetter {
                    body: letter
                        .body
                        .slice(..letter.body.len().min(TRUNCATED_BODY_LEN)),
                    ..letter.clone()
                };
                self.store(&subject, &headers, &cut)
                    .await
                    .map_err(|error| DeadLetterError::Publish(error.to_string()))
            }
            other => other.map_err(|error| DeadLetterError::Publish(error.to_string())),
        }
    }

    async fn store(
        &self,
        subject: &str,
        headers: &HeaderMap,
        letter: &DeadLetter<'_>,
    ) -> Result<(), jetstream::context::PublishError> {
        let ack = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers.clone(), letter.body.clone())
            .await?;
        ack.await.map(|_| ())
    }
}

fn entry_headers(letter: &DeadLetter<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = letter.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            let kept = if name.to_ascii_lowercase().starts_with("nats-") {
                format!("{}{name}", header::ORIGINAL_PREFIX)
            } else {
                name.to_owned()
            };
            for value in values {
                headers.append(kept.as_str(), value.as_str());
            }
        }
    }
    let error: String = one_line(letter.error, MAX_ERROR_LEN);
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    headers.insert(header::REASON, letter.reason.as_str());
    headers.insert(header::ERROR, error.as_str());
    headers.insert(header::SINK, letter.sink);
    headers.insert(header::SOURCE_STREAM, letter.source_stream);
    headers.insert(header::SOURCE_SUBJECT, letter.source_subject);
    headers.insert(header::SOURCE_SEQ, letter.source_seq.to_string().as_str());
    headers.insert(header::TIME, now.as_str());
    headers.insert(header::ATTEMPTS, letter.attempts.to_string().as_str());
    // Not the attempt: a later attempt's entry is the same entry.
    let id = format!(
        "{}:{}:{}",
        letter.sink, letter.source_stream, letter.source_seq
    );
    headers.insert("Nats-Msg-Id", id.as_str());
    headers
}

/// Header values cannot hold line breaks.
fn one_line(text: &str, max_len: usize) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > max_len {
        let mut cut = max_len;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::parse("nope"), None);
    }

    #[test]
    fn nats_headers_are_set_aside_and_the_rest_kept() {
        let mut original = HeaderMap::new();
        original.insert("Nats-Msg-Id", "producer-id");
        original.insert("Content-Type", "application/json");
        let letter = DeadLetter {
            sink: "s",
            reason: DeadLetterReason::InvalidPayload,
            error: "bad\nthing",
            source_stream: "ORDERS",
            source_subject: "orders.x",
            source_seq: 7,
            attempts: 1,
            headers: Some(&original),
            body: Bytes::from_static(b"x"),
        };
        let headers = entry_headers(&letter);
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("s:ORDERS:7")
        );
        let later_attempt = entry_headers(&DeadLetter {
            attempts: 3,
            ..letter.clone()
        });
        assert_eq!(
            later_attempt.get("Nats-Msg-Id"),
            headers.get("Nats-Msg-Id"),
            "a later attempt's dead letter is the same entry"
        );
        assert_eq!(
            headers
                .get("Jetline-Dlq-Orig-Nats-Msg-Id")
                .map(|v| v.as_str()),
            Some("producer-id")
        );
        assert_eq!(
            headers.get("Content-Type").map(|v| v.as_str()),
            Some("application/json")
        );
        assert_eq!(
            headers.get(header::ERROR).map(|v| v.as_str()),
            Some("bad thing")
        );
    }
}
