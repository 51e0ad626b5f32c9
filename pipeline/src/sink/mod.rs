//! The [`Sink`] trait, the [`Event`] a sink receives, and [`SinkError`] with
//! its retry [`ErrorClass`]. One module per sink kind.
//!
//! A sink returns only once its write is durable (the stream acked it, the
//! transaction committed, the webhook answered 2xx): the caller acks the
//! source message after that, never before.

pub mod custom;
pub mod jetstream;

use std::future::Future;

use crate::{envelope::Envelope, source::Delivery, template::TemplateError};

/// A validated event on its way to a sink, with the delivery it came from
/// (whose ack handle travels with it).
#[derive(Debug)]
pub struct Event {
    pub envelope: Envelope,
    pub delivery: Delivery,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The sink holds the event's effect.
    Written,
    /// Nothing to do for this event (already applied, or no rule for its type).
    Skipped,
}

/// Writes events to one destination.
pub trait Sink: Send + Sync + 'static {
    /// Applies one event; returns once the effect is durable.
    fn apply(&self, event: &Event) -> impl Future<Output = Result<Applied, SinkError>> + Send;
}

/// Whether a failed write may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot render {what}: {source}")]
    Render {
        what: &'static str,
        #[source]
        source: TemplateError,
    },
    #[error("no stream stores subject {subject}")]
    NoStream { subject: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("publish to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("message too large for {subject}: {message}")]
    TooLarge { subject: String, message: String },
    /// The sink refuses this event for good (a custom sink's verdict).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The sink cannot apply it now (a custom sink's verdict).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl SinkError {
    /// Transient errors are retried with backoff; permanent ones are
    /// dead-lettered at once.
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Render { .. } => ErrorClass::Permanent,
            SinkError::NoStream { .. } => ErrorClass::Transient,
            SinkError::Timeout(_) => ErrorClass::Transient,
            SinkError::Connection(_) => ErrorClass::Transient,
            SinkError::Publish { .. } => ErrorClass::Transient,
            SinkError::TooLarge { .. } => ErrorClass::Permanent,
            SinkError::Rejected(_) => ErrorClass::Permanent,
            SinkError::Unavailable(_) => ErrorClass::Transient,
        }
    }
}
