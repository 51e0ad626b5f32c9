//! JetStream sink: publishes each event to a subject rendered from the sink's
//! template, with `Nats-Msg-Id` = event id so the stream stores a redelivered
//! event once, and waits for the stream's ack.
//!
//! Many events are in flight at once (one per lane): publishes pipeline on the
//! connection, each lane awaiting only its own ack. An event that was not
//! upcast goes out as the source's own bytes when the encodings agree.
//! [`Publication`] decides what goes out, without IO.

use async_nats::{
    HeaderMap, HeaderName,
    header::NATS_MESSAGE_ID,
    jetstream::{self, context::PublishErrorKind},
};

use super::{Applied, Event, Sink, SinkError};
use crate::{
    config::raw::{Format, HeaderSet, JetStreamSinkConfig},
    envelope::Encoding,
    template::Template,
};

/// Header names written on each published event.
pub mod header {
    pub const EVENT_TYPE: &str = "Jetline-Event-Type";
    pub const SCHEMA_VERSION: &str = "Jetline-Schema-Version";
    pub const AGGREGATE_TYPE: &str = "Jetline-Aggregate-Type";
    pub const AGGREGATE_ID: &str = "Jetline-Aggregate-Id";
    pub const CORRELATION_ID: &str = "Jetline-Correlation-Id";
    pub const CAUSATION_ID: &str = "Jetline-Causation-Id";
    pub const SOURCE_STREAM: &str = "Jetline-Source-Stream";
    pub const SOURCE_SEQ: &str = "Jetline-Source-Seq";
}

/// What the sink publishes for an event (subject, headers, body), decided
/// without a connection: the sink and `jetline project` share it.
#[derive(Debug, Clone)]
pub struct Publication {
    subject: Template,
    encoding: Encoding,
    header_set: HeaderSet,
}

impl Publication {
    pub fn new(config: &JetStreamSinkConfig) -> Result<Self, SinkError> {
        let subject =
            Template::parse_subject(&config.subject).map_err(|source| SinkError::Render {
                what: "subject",
                source,
            })?;
        let encoding = match config.format {
            Format::Protobuf => Encoding::Protobuf,
            Format::Json => Encoding::Json,
        };
        Ok(Self {
            subject,
            encoding,
            header_set: config.headers,
        })
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub fn subject(&self, event: &Event) -> Result<String, SinkError> {
        self.subject
            .render_subject(&event.envelope, &event.delivery.subject)
            .map_err(|source| SinkError::Render {
                what: "subject",
                source,
            })
    }

    /// The envelope in the sink's encoding: the source's own bytes when
    /// they are that already.
    pub fn body(&self, event: &Event) -> Result<bytes::Bytes, SinkError> {
        Ok(match event.original_body(self.encoding) {
            Some(original) => original.clone(),
            None => event.envelope.encode(self.encoding)?.into(),
        })
    }

    pub fn headers(&self, event: &Event) -> HeaderMap {
        // Names made from static text: no allocation per event.
        let name = HeaderName::from_static;
        let envelope = &event.envelope;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, envelope.event_id.as_str());
        headers.insert(name("Content-Type"), self.encoding.content_type());
        for (carried, value) in event.trace_headers() {
            headers.insert(name(carried), value);
        }
        if self.header_set == HeaderSet::Minimal {
            return headers;
        }
        headers.insert(name(header::EVENT_TYPE), envelope.event_type.as_str());
        headers.insert(
            name(header::SCHEMA_VERSION),
            envelope.schema_version.to_string().as_str(),
        );
        headers.insert(name(header::AGGREGATE_ID), envelope.aggregate_id.as_str());
        for (header_name, value) in [
            (header::AGGREGATE_TYPE, &envelope.aggregate_type),
            (header::CORRELATION_ID, &envelope.correlation_id),
            (header::CAUSATION_ID, &envelope.causation_id),
        ] {
            if !value.is_empty() {
                headers.insert(name(header_name), value.as_str());
            }
        }
        headers.insert(name(header::SOURCE_STREAM), event.delivery.stream.as_ref());
        headers.insert(
            name(header::SOURCE_SEQ),
            event.delivery.stream_seq.to_string().as_str(),
        );
        headers
    }
}

pub struct JetStreamSink {
    jetstream: jetstream::Context,
    publication: Publication,
}

impl JetStreamSink {
    pub fn new(
        jetstream: jetstream::Context,
        config: &JetStreamSinkConfig,
    ) -> Result<Self, SinkError> {
        Ok(Self {
            jetstream,
            publication: Publication::new(config)?,
        })
    }
}

impl Sink for JetStreamSink {
    fn passes_through(&self, encoding: Encoding) -> bool {
        encoding == self.publication.encoding
    }

    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        // Shared, not copied, between the publish and its error.
        let subject = async_nats::Subject::from(self.publication.subject(event)?);
        let body = self.publication.body(event)?;
        let publish_error = |kind: PublishErrorKind, message: String| match kind {
            PublishErrorKind::StreamNotFound => SinkError::NoStream {
                subject: subject.to_string(),
            },
            PublishErrorKind::TimedOut => SinkError::Timeout(format!("publish ack for {subject}")),
            PublishErrorKind::BrokenPipe => SinkError::Connection(message),
            PublishErrorKind::MaxPayloadExceeded => SinkError::TooLarge {
                subject: subject.to_string(),
                message,
            },
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::Other => SinkError::Publish {
                subject: subject.to_string(),
                message,
            },
        };
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), self.publication.headers(event), body)
            .await
            .map_err(|err| publish_error(err.kind(), err.to_string()))?;
        ack.await
            .map_err(|err| publish_error(err.kind(), err.to_string()))?;
        Ok(Applied::Written)
    }
}
