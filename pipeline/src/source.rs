//! One durable pull consumer per (source, sink): created or updated at
//! start-up, read in batches; each message becomes a [`Delivery`] that carries
//! its ack handle, stream sequence, delivery count and publish time.
//!
//! Only `outcome.rs` acks: the ack methods here are crate-private for it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, PullConsumer, pull},
    },
};
use bytes::Bytes;
use time::OffsetDateTime;

use crate::config::{ConsumerSettings, PipelineSpec};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("stream {stream} not found: {message}")]
    StreamMissing { stream: String, message: String },
    #[error("cannot create or update consumer {consumer} on {stream}: {message}")]
    Consumer {
        stream: String,
        consumer: String,
        message: String,
    },
    #[error("cannot read from consumer {consumer}: {message}")]
    Messages { consumer: String, message: String },
    #[error("message without JetStream metadata: {0}")]
    Metadata(String),
    #[error("ack failed: {0}")]
    Ack(String),
}

/// A message as received, with everything needed to settle it later.
pub struct Delivery {
    pub stream: Arc<str>,
    pub subject: async_nats::Subject,
    pub headers: Option<HeaderMap>,
    pub body: Bytes,
    pub stream_seq: u64,
    /// The consumer's sequence of this delivery: one more for each
    /// delivery the server makes, redeliveries included.
    pub consumer_seq: u64,
    /// The delivery count kept by the server: the attempt number, which
    /// survives a restart of Jetline.
    pub attempt: u32,
    pub published: OffsetDateTime,
    /// Where acks go. The client that sends them is the consumer's own: a
    /// delivery does not carry a JetStream context of its own, which keeps
    /// it small to move.
    reply: Option<async_nats::Subject>,
    /// Counts the body in its consumer's [`HeldBytes`] while it lives.
    _held: Hold,
}

/// The bytes of message bodies one consumer holds: each delivery counts
/// from receipt until it is dropped (settled, handed back or discarded),
/// so no path can forget to give them back.
#[derive(Debug, Clone, Default)]
pub struct HeldBytes(Arc<AtomicUsize>);

impl HeldBytes {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn hold(&self, bytes: usize) -> Hold {
        self.0.fetch_add(bytes, Ordering::Relaxed);
        Hold {
            counter: self.clone(),
            bytes,
        }
    }
}

#[derive(Debug)]
struct Hold {
    counter: HeldBytes,
    bytes: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.counter.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("stream_seq", &self.stream_seq)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A message as a delivery, counted in `held` while it lives.
    pub fn from_message(
        stream: &Arc<str>,
        message: jetstream::Message,
        held: &HeldBytes,
    ) -> Result<Self, SourceError> {
        let info = message
            .info()
            .map_err(|err| SourceError::Metadata(err.to_string()))?;
        let (stream_seq, consumer_seq, attempt, published) = (
            info.stream_sequence,
            info.consumer_sequence,
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.published,
        );
        let message = message.message;
        Ok(Self {
            _held: held.hold(message.payload.len()),
            reply: message.reply,
            stream: Arc::clone(stream),
            subject: message.subject,
            headers: message.headers,
            body: message.payload,
            stream_seq,
            consumer_seq,
            attempt,
            published,
        })
    }

    /// A delivery no server made (`jetline project` feeds the sinks' own
    /// functions with it): it has nothing to ack and no consumer counts it.
    pub fn detached(
        stream: &str,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        stream_seq: u64,
    ) -> Self {
        Self {
            _held: HeldBytes::default().hold(0),
            reply: None,
            stream: Arc::from(stream),
            subject: subject.into(),
            headers: Some(headers),
            body,
            stream_seq,
            consumer_seq: stream_seq,
            attempt: 1,
            published: OffsetDateTime::now_utc(),
        }
    }

    /// The `Content-Type` header, when present.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .as_ref()?
            .get("Content-Type")
            .map(|value| value.as_str())
    }

    pub(crate) async fn acknowledge(
        &self,
        client: &async_nats::Client,
        kind: AckKind,
    ) -> Result<(), SourceError> {
        let Some(reply) = &self.reply else {
            return Err(SourceError::Ack("the message has no reply subject".into()));
        };
        client
            .publish(reply.clone(), kind.into())
            .await
            .map_err(|err| SourceError::Ack(err.to_string()))
    }
}

/// The priority group every Jetline replica pulls in.
pub const PRIORITY_GROUP: &str = "jetline";

/// Creates the durable consumer, or updates it when the config changed in a
/// way JetStream allows (otherwise the server's refusal is the error). An
/// existing consumer keeps where it starts (`jetline replay` may have set
/// it); a new one starts at the beginning of the stream.
pub async fn bind(
    jetstream: &jetstream::Context,
    spec: &PipelineSpec,
    settings: &ConsumerSettings,
) -> Result<PullConsumer, SourceError> {
    bind_from(jetstream, spec, settings, None).await
}

/// As [`bind`], a new consumer starting at `start` (`None`: as [`bind`]).
pub async fn bind_from(
    jetstream: &jetstream::Context,
    spec: &PipelineSpec,
    settings: &ConsumerSettings,
    start: Option<DeliverPolicy>,
) -> Result<PullConsumer, SourceError> {
    let stream =
        jetstream
            .get_stream(&spec.stream)
            .await
            .map_err(|err| SourceError::StreamMissing {
                stream: spec.stream.clone(),
                message: err.to_string(),
            })?;
    let deliver_policy = match start {
        Some(start) => start,
        None => match stream.consumer_info(&spec.durable_name).await {
            Ok(info) => info.config.deliver_policy,
            Err(_) => DeliverPolicy::All,
        },
    };
    let (filter_subject, filter_subjects) = match spec.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let config = pull::Config {
        durable_name: Some(spec.durable_name.clone()),
        description: Some(format!(
            "jetline: source {} to sink {}",
            spec.source, spec.sink
        )),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        // Jetline dead-letters at `retry.max_attempts` itself; a server-side
        // limit would drop events silently instead.
        max_deliver: -1,
        filter_subject,
        filter_subjects,
        // The fence between replicas: the server delivers to one pinned
        // client per group, and moves the pin to a standby only once the
        // pinned one has not pulled for `takeover_after`.
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PRIORITY_GROUP.to_owned()],
        priority_timeout: settings.takeover_after,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|err| SourceError::Consumer {
            stream: spec.stream.clone(),
            consumer: spec.durable_name.clone(),
            message: err.to_string(),
        })
}

/// The consumer's messages, pulled in batches of at most `batch_bytes` with
/// heartbeats.
pub async fn messages(
    consumer: &PullConsumer,
    settings: &ConsumerSettings,
    batch_bytes: usize,
    name: &str,
) -> Result<pull::Stream, SourceError> {
    let batch = usize::try_from(settings.max_ack_pending)
        .unwrap_or(usize::MAX)
        .clamp(1, 500);
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .max_bytes_per_batch(batch_bytes)
        .group(PRIORITY_GROUP)
        .heartbeat(settings.pull_expiry() / 2)
        .expires(settings.pull_expiry())
        .messages()
        .await
        .map_err(|err| SourceError::Messages {
            consumer: name.to_owned(),
            message: err.to_string(),
        })
}
