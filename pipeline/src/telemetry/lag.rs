//! Consumer lag, read from the server: pending, ack pending and redelivered
//! from the consumer's info, and the lag in seconds from the publish time of
//! the oldest message the sink has not applied (the first message above the
//! ack floor that the consumer's filter selects). The poller refreshes the
//! gauges; `jetline status` prints the same figures.
//!
//! **Invariant:** the cost does not grow with traffic: one consumer-info
//! request per consumer per `metrics.lag_poll_interval`, plus, only while the
//! consumer is behind, one message read per filter subject.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{self, Info},
    context::ConsumerInfoErrorKind,
    stream::{RawMessageErrorKind, Stream},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Readiness;
use crate::config::PipelineSpec;

/// The lag figures of one consumer, as read from the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsumerLag {
    /// Messages not yet delivered (`num_pending`).
    pub pending: u64,
    /// Delivered, not yet acked (`num_ack_pending`).
    pub ack_pending: u64,
    /// Redelivered, not yet acked (`num_redelivered`).
    pub redelivered: u64,
    /// Age of the oldest event not yet applied; 0 when caught up.
    pub lag_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("stream {stream} not found")]
    StreamMissing { stream: String },
    #[error("consumer {consumer} not found on stream {stream}")]
    ConsumerMissing { stream: String, consumer: String },
    #[error("cannot read consumer {consumer} on stream {stream}: {message}")]
    ConsumerInfo {
        stream: String,
        consumer: String,
        message: String,
    },
    #[error("cannot read stream {stream} after sequence {after}: {message}")]
    StreamRead {
        stream: String,
        after: u64,
        message: String,
    },
}

/// Reads the lag of the durable `consumer` on `stream`.
pub async fn read(
    jetstream: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<ConsumerLag, LagError> {
    let info_error = |message: String| LagError::ConsumerInfo {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        message,
    };
    // No stream-info request: the consumer info names what is needed.
    let handle = jetstream
        .get_stream_no_info(stream)
        .await
        .map_err(|err| info_error(err.to_string()))?;
    let info = handle
        .consumer_info(consumer)
        .await
        .map_err(|err| match err.kind() {
            ConsumerInfoErrorKind::NotFound => LagError::ConsumerMissing {
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
            },
            ConsumerInfoErrorKind::StreamNotFound => LagError::StreamMissing {
                stream: stream.to_owned(),
            },
            _ => info_error(err.to_string()),
        })?;
    let oldest = if info.num_pending == 0 && info.num_ack_pending == 0 {
        None
    } else {
        oldest_unapplied(&handle, &info).await?
    };
    Ok(ConsumerLag {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        lag_seconds: lag_seconds(OffsetDateTime::now_utc(), oldest),
    })
}

/// The publish time of the first message above the ack floor that the
/// consumer's filter selects, if any is still stored.
async fn oldest_unapplied(
    stream: &Stream<()>,
    info: &Info,
) -> Result<Option<OffsetDateTime>, LagError> {
    let after = info.ack_floor.stream_sequence;
    let mut oldest: Option<(u64, OffsetDateTime)> = None;
    // One read per filter subject: the server finds the next message per
    // subject; the earliest sequence among them is the oldest.
    for filter in filter_subjects(&info.config) {
        match stream
            .get_first_raw_message_by_subject(&filter, after + 1)
            .await
        {
            Ok(message) => {
                if oldest.is_none_or(|(sequence, _)| message.sequence < sequence) {
                    oldest = Some((message.sequence, message.time));
                }
            }
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(err) => {
                return Err(LagError::StreamRead {
                    stream: info.stream_name.clone(),
                    after,
                    message: err.to_string(),
                });
            }
        }
    }
    Ok(oldest.map(|(_, published)| published))
}

/// The subjects a consumer selects; the whole stream when unfiltered.
fn filter_subjects(config: &consumer::Config) -> Vec<String> {
    if !config.filter_subjects.is_empty() {
        config.filter_subjects.clone()
    } else if !config.filter_subject.is_empty() {
        vec![config.filter_subject.clone()]
    } else {
        vec![">".to_owned()]
    }
}

/// Seconds from `oldest` (the publish time of the oldest unapplied event) to
/// `now`; 0 when nothing is waiting. Never negative, even when the server's
/// clock runs ahead of ours.
fn lag_seconds(now: OffsetDateTime, oldest: Option<OffsetDateTime>) -> f64 {
    oldest.map_or(0.0, |published| (now - published).as_seconds_f64().max(0.0))
}

/// Refreshes the lag gauges of every consumer each `interval` until
/// `shutdown`. Skips rounds while Jetline is not ready (disconnected, or
/// consumers not yet bound); the gauges then keep their last values.
pub async fn poll(
    jetstream: jetstream::Context,
    pipelines: Vec<PipelineSpec>,
    interval: Duration,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Log a consumer's failure when it starts and its recovery, not each round.
    let mut failing = vec![false; pipelines.len()];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if readiness.check().is_err() {
            // Look again soon: the first figures should not wait a whole
            // interval after the consumers are bound.
            tick.reset_after(interval.min(Duration::from_millis(100)));
            continue;
        }
        let reads = futures::future::join_all(
            pipelines
                .iter()
                .map(|spec| read(&jetstream, &spec.stream, &spec.durable_name)),
        );
        let results = tokio::select! {
            _ = shutdown.cancelled() => return,
            results = reads => results,
        };
        for ((spec, result), failed) in pipelines.iter().zip(results).zip(failing.iter_mut()) {
            match result {
                Ok(lag) => {
                    if *failed {
                        tracing::info!(consumer = %spec.durable_name, "Consumer lag readable again");
                    }
                    *failed = false;
                    super::consumer_lag(&spec.source, &spec.sink, &spec.durable_name, lag);
                }
                Err(error) => {
                    if !*failed {
                        tracing::warn!(consumer = %spec.durable_name, error = %error, "Consumer lag not readable");
                    }
                    *failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_unapplied_event_and_never_negative() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(lag_seconds(now, None), 0.0);
        assert_eq!(
            lag_seconds(now, Some(now - time::Duration::milliseconds(2500))),
            2.5
        );
        assert_eq!(
            lag_seconds(now, Some(now + time::Duration::seconds(3))),
            0.0
        );
    }

    #[test]
    fn filter_subjects_come_from_the_consumer_or_cover_the_stream() {
        let one = consumer::Config {
            filter_subject: "orders.created".into(),
            ..Default::default()
        };
        let many = consumer::Config {
            filter_subjects: vec!["orders.created".into(), "orders.shipped".into()],
            ..Default::default()
        };
        assert_eq!(filter_subjects(&one), ["orders.created"]);
        assert_eq!(filter_subjects(&many), ["orders.created", "orders.shipped"]);
        assert_eq!(filter_subjects(&consumer::Config::default()), [">"]);
    }
}
