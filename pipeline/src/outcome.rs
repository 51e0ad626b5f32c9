//! [`Outcome`] -> ack, nak with delay, or dead-letter then term: the only
//! module that acks.
//!
//! **Invariant:** a source message is acked only after its sink confirmed the
//! write, and terminated only after its dead letter was stored. When storing
//! the dead letter fails, the message is nak'd and comes back.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use rand::Rng;

use crate::{
    config::RetryPolicy,
    dead_letter::{DeadLetter, DeadLetterReason, DeadLetters},
    lanes::Completion,
    sink::{Applied, ErrorClass, SinkError},
    source::Delivery,
    telemetry::{ConsumerMetrics, Readiness, Settled},
    text,
};

/// What happens to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    Skipped,
    /// Redeliver after `after` (a transient failure, attempts left).
    Retry {
        after: Duration,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

impl Outcome {
    /// What `jetline_events_total{outcome}` counts it as.
    pub fn settled(&self) -> Settled {
        match self {
            Outcome::Applied => Settled::Applied,
            Outcome::Skipped => Settled::Skipped,
            Outcome::Retry { .. } => Settled::Retried,
            Outcome::DeadLetter { .. } => Settled::DeadLettered,
        }
    }

    /// What was done, once carried out with `completion`: a dead letter
    /// that could not be stored was nak'd, and counts as retried.
    pub fn settled_as(&self, completion: Completion) -> Settled {
        match (self, completion) {
            (Outcome::DeadLetter { .. }, Completion::Retrying) => Settled::Retried,
            _ => self.settled(),
        }
    }
}

/// Turns a sink's answer into an outcome, given the attempt number (the
/// server's delivery count, which survives restarts) and the sink's retry
/// policy. A sink's `Retry-After` is a floor under the backoff, honoured up to
/// `retry_after_cap` (the consumer's `ack_wait`, which crash recovery waits
/// for).
pub fn decide(
    result: &Result<Applied, SinkError>,
    attempt: u32,
    retry: &RetryPolicy,
    retry_after_cap: Duration,
) -> Outcome {
    match result {
        Ok(Applied::Written) => Outcome::Applied,
        Ok(Applied::Skipped) => Outcome::Skipped,
        Err(error) => match error.class() {
            ErrorClass::Permanent => Outcome::DeadLetter {
                reason: DeadLetterReason::SinkRejected,
                error: error.to_string(),
            },
            ErrorClass::Transient if attempt >= retry.max_attempts => Outcome::DeadLetter {
                reason: DeadLetterReason::MaxAttempts,
                error: error.to_string(),
            },
            // The destination's own `Retry-After` is a floor under the backoff.
            ErrorClass::Transient => Outcome::Retry {
                after: jittered(retry.delay_after(attempt), retry.jitter)
                    .max(error.retry_after().unwrap_or_default().min(retry_after_cap)),
            },
        },
    }
}

fn jittered(delay: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || delay.is_zero() {
        return delay;
    }
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    delay.mul_f64(factor.max(0.0))
}

/// Where a settled delivery belongs, for the dead-letter entry and metrics.
pub struct Settler<'a> {
    pub client: &'a async_nats::Client,
    pub sink: &'a str,
    pub dead_letters: &'a DeadLetters,
    pub metrics: &'a ConsumerMetrics,
    /// Told when dead letters cannot be stored, and when they can again.
    pub readiness: &'a Readiness,
}

impl Settler<'_> {
    /// Carries out `outcome` on the source message and counts what was done
    /// in `jetline_events_total`.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        event_type: &str,
        outcome: &Outcome,
    ) -> Completion {
        let completion = self.carry_out(delivery, outcome).await;
        self.metrics
            .event(event_type, outcome.settled_as(completion));
        completion
    }

    async fn carry_out(&self, delivery: &Delivery, outcome: &Outcome) -> Completion {
        let result = match outcome {
            Outcome::Applied | Outcome::Skipped => {
                delivery.acknowledge(self.client, AckKind::Ack).await
            }
            Outcome::Retry { after } => {
                tracing::debug!(
                    sink = self.sink,
                    stream_seq = delivery.stream_seq,
                    attempt = delivery.attempt,
                    delay = ?after,
                    "Event will be retried"
                );
                let nak = delivery
                    .acknowledge(self.client, AckKind::Nak(Some(*after)))
                    .await;
                log_ack_failure(self.sink, delivery, nak);
                return Completion::Retrying;
            }
            Outcome::DeadLetter { reason, error } => {
                let letter = DeadLetter {
                    sink: self.sink,
                    reason: *reason,
                    error,
                    source_stream: &delivery.stream,
                    source_subject: &delivery.subject,
                    source_seq: delivery.stream_seq,
                    attempts: delivery.attempt,
                    headers: delivery.headers.as_ref(),
                    body: delivery.body.clone(),
                };
                if let Err(store_error) = self.dead_letters.publish(&letter).await {
                    self.readiness.dead_letter_failed(&store_error.to_string());
                    tracing::error!(
                        sink = self.sink,
                        stream_seq = delivery.stream_seq,
                        error = %store_error,
                        "Dead letter could not be stored; the event will come back"
                    );
                    let nak = delivery
                        .acknowledge(self.client, AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    log_ack_failure(self.sink, delivery, nak);
                    return Completion::Retrying;
                }
                self.readiness.dead_letter_stored();
                tracing::warn!(
                    sink = self.sink,
                    stream_seq = delivery.stream_seq,
                    subject = %delivery.subject,
                    reason = reason.as_str(),
                    error = %text::cut(error, text::LOGGED_CHARS),
                    "Event dead-lettered"
                );
                self.metrics.dead_lettered(*reason);
                delivery.acknowledge(self.client, AckKind::Term).await
            }
        };
        log_ack_failure(self.sink, delivery, result);
        Completion::Done
    }
}

/// Extends the ack deadline of a delivery still being worked on or waiting.
pub async fn progress(client: &async_nats::Client, delivery: &Delivery) {
    // A lost progress ack only risks a redelivery, which the lanes absorb.
    let _ = delivery.acknowledge(client, AckKind::Progress).await;
}

/// Ack a delivery that belongs to another partition of the same (source,
/// sink): that partition's consumer applies it.
pub async fn pass(client: &async_nats::Client, delivery: &Delivery) {
    let result = delivery.acknowledge(client, AckKind::Ack).await;
    if let Err(error) = result {
        tracing::debug!(stream_seq = delivery.stream_seq, error = %error, "Ack of another partition's event failed; it comes back");
    }
}

/// Nak without delay: hand the delivery back at shutdown.
pub async fn release(client: &async_nats::Client, delivery: &Delivery) {
    let _ = delivery.acknowledge(client, AckKind::Nak(None)).await;
}

fn log_ack_failure(
    sink: &str,
    delivery: &Delivery,
    result: Result<(), crate::source::SourceError>,
) {
    // The server redelivers after ack_wait; sinks are idempotent.
    if let Err(error) = result {
        tracing::warn!(sink, stream_seq = delivery.stream_seq, error = %error, "Ack not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(10);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: vec![Duration::from_millis(100), Duration::from_secs(1)],
            jitter: 0.0,
        }
    }

    #[test]
    fn classification_and_attempts_decide() {
        let transient = Err(SinkError::Connection("gone".into()));
        let permanent = Err(SinkError::TooLarge {
            subject: "s".into(),
            message: "big".into(),
        });
        assert_eq!(
            decide(&Ok(Applied::Written), 1, &policy(), CAP),
            Outcome::Applied
        );
        assert_eq!(
            decide(&Ok(Applied::Skipped), 1, &policy(), CAP),
            Outcome::Skipped
        );
        assert_eq!(
            decide(&transient, 1, &policy(), CAP),
            Outcome::Retry {
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decide(&transient, 2, &policy(), CAP),
            Outcome::Retry {
                after: Duration::from_secs(1)
            }
        );
        assert!(matches!(
            decide(&transient, 3, &policy(), CAP),
            Outcome::DeadLetter {
                reason: DeadLetterReason::MaxAttempts,
                ..
            }
        ));
        assert!(matches!(
            decide(&permanent, 1, &policy(), CAP),
            Outcome::DeadLetter {
                reason: DeadLetterReason::SinkRejected,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_is_a_floor_under_the_backoff_up_to_the_cap() {
        let unavailable = |millis| {
            Err(SinkError::HttpUnavailable {
                status: 503,
                retry_after: Some(Duration::from_millis(millis)),
            })
        };
        let cases = [
            (unavailable(500), Duration::from_millis(500)),
            (unavailable(0), Duration::from_millis(100)),
            (unavailable(60_000), CAP),
        ];
        for (result, expected) in cases {
            assert_eq!(
                decide(&result, 1, &policy(), CAP),
                Outcome::Retry { after: expected },
                "{result:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(1), 0.2);
            assert!(delay >= Duration::from_millis(800) && delay <= Duration::from_millis(1200));
        }
    }
}
