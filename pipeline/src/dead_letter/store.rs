//! Reading the dead-letter stream and redriving entries: what `jetline dlq`
//! lists, shows and republishes.
//!
//! **Invariant:** an entry is removed only after its republish was acked by
//! the source stream, and a redrive works on the entries present when it
//! started, so an event that fails again lands back as a new entry (with its
//! history) instead of being picked up again.

use async_nats::HeaderMap;
use bytes::Bytes;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{DeadLetterError, DeadLetterReason, DeadLetters, header};
use crate::template::subject_matches;

/// One stored dead letter.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub stored_at: OffsetDateTime,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Entry {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.as_str())
    }

    pub fn sink(&self) -> &str {
        self.header(header::SINK).unwrap_or_default()
    }

    pub fn reason(&self) -> &str {
        self.header(header::REASON).unwrap_or_default()
    }

    pub fn error(&self) -> &str {
        self.header(header::ERROR).unwrap_or_default()
    }

    /// The original headers, without what dead-lettering added, for a republish.
    fn original_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, values) in self.headers.iter() {
            let name: &str = name.as_ref();
            let added = name.starts_with(header::PREFIX)
                || name.eq_ignore_ascii_case("Nats-Msg-Id")
                || name == header::REDRIVE_SINK;
            if added {
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
        headers
    }

    /// The history carried by a redriven event: earlier ones plus this entry.
    fn history(&self) -> String {
        let this = format!(
            "{} {} {} attempts={}",
            self.stored_at.format(&Rfc3339).unwrap_or_default(),
            self.sink(),
            self.reason(),
            self.header(header::ATTEMPTS).unwrap_or("?")
        );
        match self.header(header::HISTORY) {
            Some(earlier) if !earlier.is_empty() => format!("{earlier}; {this}"),
            _ => this,
        }
    }
}

/// Which entries a command works on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub sink: Option<String>,
    pub reason: Option<DeadLetterReason>,
    pub since: Option<OffsetDateTime>,
}

impl Filter {
    fn subject(&self, prefix: &str) -> String {
        format!(
            "{prefix}.{}.{}",
            self.sink.as_deref().unwrap_or("*"),
            self.reason.map_or("*", DeadLetterReason::as_str)
        )
    }

    fn accepts(&self, entry: &Entry) -> bool {
        self.sink.as_deref().is_none_or(|sink| entry.sink() == sink)
            && self
                .reason
                .is_none_or(|reason| entry.reason() == reason.as_str())
            && self.since.is_none_or(|since| entry.stored_at >= since)
    }
}

/// Where a redriven event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveTarget {
    /// Back to the sink that dead-lettered it (the default): only that sink's
    /// consumer applies it, the others skip it.
    OriginalSink,
    /// To every sink that reads the source subject.
    Source,
    /// To one named sink.
    Sink(String),
}

impl DeadLetters {
    /// The entries matching `filter`, in stream order, up to the last one
    /// stored when the call started.
    pub async fn entries(&self, filter: &Filter) -> Result<Vec<Entry>, DeadLetterError> {
        let stream_error = |message: String| DeadLetterError::Stream {
            stream: self.stream.clone(),
            message,
        };
        let mut stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|err| stream_error(err.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|err| stream_error(err.to_string()))?
            .state
            .clone();
        let mut entries = Vec::new();
        if state.messages == 0 {
            return Ok(entries);
        }
        let pattern = filter.subject(&self.subject_prefix);
        for seq in state.first_sequence..=state.last_sequence {
            let message = match stream.get_raw_message(seq).await {
                Ok(message) => message,
                // Deleted (redriven) entries leave gaps.
                Err(_) => continue,
            };
            if !subject_matches(&pattern, &message.subject) {
                continue;
            }
            let entry = Entry {
                seq,
                stored_at: message.time,
                headers: message.headers,
                body: message.payload,
            };
            if filter.accepts(&entry) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// One entry by its sequence in the dead-letter stream.
    pub async fn entry(&self, seq: u64) -> Result<Entry, DeadLetterError> {
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|err| DeadLetterError::Stream {
                stream: self.stream.clone(),
                message: err.to_string(),
            })?;
        let message = stream
            .get_raw_message(seq)
            .await
            .map_err(|_| DeadLetterError::NotFound(seq))?;
        Ok(Entry {
            seq,
            stored_at: message.time,
            headers: message.headers,
            body: message.payload,
        })
    }

    /// Republishes `entry` to its source subject, then removes it.
    pub async fn redrive(
        &self,
        entry: &Entry,
        target: &RedriveTarget,
    ) -> Result<(), DeadLetterError> {
        let subject = entry
            .header(header::SOURCE_SUBJECT)
            .ok_or(DeadLetterError::Incomplete {
                seq: entry.seq,
                header: header::SOURCE_SUBJECT,
            })?
            .to_owned();
        // Only the start of the original was kept: republishing it would
        // be a different, broken event.
        if let Some(length) = entry.header(header::TRUNCATED_FROM) {
            return Err(DeadLetterError::Redrive {
                seq: entry.seq,
                message: format!("the entry keeps only the start of its {length}-byte original"),
            });
        }
        let mut headers = entry.original_headers();
        headers.insert(header::HISTORY, entry.history().as_str());
        match target {
            RedriveTarget::OriginalSink => headers.insert(header::REDRIVE_SINK, entry.sink()),
            RedriveTarget::Sink(sink) => headers.insert(header::REDRIVE_SINK, sink.as_str()),
            RedriveTarget::Source => {}
        }
        let redrive_error = |message: String| DeadLetterError::Redrive {
            seq: entry.seq,
            message,
        };
        self.jetstream
            .publish_with_headers(subject, headers, entry.body.clone())
            .await
            .map_err(|err| redrive_error(err.to_string()))?
            .await
            .map_err(|err| redrive_error(err.to_string()))?;
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|err| redrive_error(err.to_string()))?;
        stream
            .delete_message(entry.seq)
            .await
            .map(|_| ())
            .map_err(|err| redrive_error(format!("republished, but not removed: {err}")))
    }
}

/// The sink a redriven delivery is meant for, if it names one.
/// Whether a message is an event redriven from the dead-letter stream.
pub fn is_redriven(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|headers| headers.get(header::HISTORY).is_some())
}

pub fn redrive_sink(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?
        .get(header::REDRIVE_SINK)
        .map(|value| value.as_str())
}
