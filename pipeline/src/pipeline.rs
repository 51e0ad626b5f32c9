//! One (source, sink) consumer's loop, the data's path top to bottom:
//! message -> [`Delivery`] -> [`Envelope`] (decode, validate) -> route ->
//! lanes (per-aggregate order) -> sink -> [`Outcome`] -> ack / nak / dead letter.
//!
//! **Invariant:** the loop never acks by itself; every delivery it admits is
//! settled by `outcome.rs` after its sink answered (or is handed back, nak'd,
//! at shutdown). After a restart, nothing starts before the events the
//! previous process left unacked are back (`recovery.rs`).

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConsumerSettings, OnDeadLetter, Ordering, PipelineSpec},
    dead_letter::{DeadLetterReason, DeadLetters},
    envelope::{DecodeError, Decoder},
    lanes::{Completion, Dispatch, Lanes},
    outcome::{self, Outcome, Settler},
    recovery::Recovery,
    route::Router,
    sink::{Event, Sink},
    source::{self, Delivery, SourceError},
    telemetry::{self, Readiness},
};

/// Everything one consumer's loop needs, shared with its event tasks.
pub struct Pipeline<S> {
    pub spec: PipelineSpec,
    pub settings: ConsumerSettings,
    pub router: Router,
    pub decoder: Arc<Decoder>,
    pub sink: Arc<S>,
    pub dead_letters: DeadLetters,
}

/// A delivery admitted to the lanes.
enum Work {
    Apply(Event),
    Reject(Delivery, DecodeError),
}

impl Work {
    fn delivery(&self) -> &Delivery {
        match self {
            Work::Apply(event) => &event.delivery,
            Work::Reject(delivery, _) => delivery,
        }
    }
}

impl<S: Sink> Pipeline<S> {
    /// Binds the durable consumer, then reads, applies and settles until
    /// `shutdown`; then finishes what is in flight and hands the rest back.
    pub async fn run(
        self: Arc<Self>,
        jetstream: async_nats::jetstream::Context,
        readiness: Arc<Readiness>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let consumer = source::bind(&jetstream, &self.spec, &self.settings).await?;
        readiness.consumer_bound();
        tracing::info!(
            source = %self.spec.source,
            sink = %self.spec.sink,
            consumer = %self.spec.durable_name,
            "Consumer bound"
        );
        let mut recovery = Recovery::after_restart(
            consumer.cached_info(),
            self.settings.effective_ack_wait(),
            tokio::time::Instant::now(),
        );
        if let Some(recovery) = &recovery {
            tracing::info!(
                consumer = %self.spec.durable_name,
                leftovers = recovery.leftovers(),
                "Waiting for the events left unacked before the restart"
            );
        }
        let stream_name: Arc<str> = Arc::from(self.spec.stream.as_str());
        let mut lanes: Lanes<Work> = Lanes::new(self.settings.concurrency);
        let mut tasks: JoinSet<(Option<String>, u64, Completion)> = JoinSet::new();
        let mut progress = tokio::time::interval(self.progress_interval());
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages = None;

        loop {
            if messages.is_none() {
                match source::messages(&consumer, &self.settings, &self.spec.durable_name).await {
                    Ok(stream) => messages = Some(stream),
                    Err(error) => {
                        tracing::warn!(consumer = %self.spec.durable_name, error = %error, "Cannot pull; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            let Some(stream) = messages.as_mut() else {
                continue;
            };
            let recovery_deadline = recovery.as_ref().map(Recovery::deadline);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next() => {
                    if let Ok((key, seq, completion)) = joined {
                        lanes.complete(key.as_deref(), seq, completion);
                    }
                    self.start_unless_recovering(&mut recovery, &mut lanes, &mut tasks);
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        match Delivery::from_message(&stream_name, message) {
                            Ok(delivery) => {
                                if let Some(recovery) = recovery.as_mut() {
                                    recovery.delivered(delivery.stream_seq);
                                }
                                self.admit(delivery, &mut lanes).await
                            }
                            Err(error) => tracing::warn!(error = %error, "Message ignored"),
                        }
                        self.start_unless_recovering(&mut recovery, &mut lanes, &mut tasks);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(consumer = %self.spec.durable_name, error = %error, "Pull error");
                    }
                    None => messages = None,
                },
                _ = progress.tick() => {
                    for work in lanes.waiting() {
                        outcome::progress(work.delivery()).await;
                    }
                }
                _ = tokio::time::sleep_until(recovery_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if recovery_deadline.is_some() => {
                    self.start_unless_recovering(&mut recovery, &mut lanes, &mut tasks);
                }
            }
        }

        // Finish what is in flight; hand back what has not started.
        while let Some(joined) = tasks.join_next().await {
            if let Ok((key, seq, completion)) = joined {
                lanes.complete(key.as_deref(), seq, completion);
            }
        }
        for work in lanes.waiting() {
            outcome::release(work.delivery()).await;
        }
        tracing::info!(consumer = %self.spec.durable_name, "Consumer stopped");
        Ok(())
    }

    /// Decodes and routes a delivery, then queues it behind its aggregate.
    async fn admit(&self, delivery: Delivery, lanes: &mut Lanes<Work>) {
        let seq = delivery.stream_seq;
        match self.decoder.decode(delivery.content_type(), &delivery.body) {
            Ok(envelope) => {
                if !self.router.wants(&delivery.subject, &envelope.event_type) {
                    self.skip(&delivery, &envelope.event_type).await;
                    return;
                }
                let key = match self.settings.ordering {
                    Ordering::PerKey => Some(envelope.aggregate_id.clone()),
                    Ordering::None => None,
                };
                let work = Work::Apply(Event { envelope, delivery });
                // A duplicate of an event in flight is dropped: the running
                // one settles it.
                let _ = lanes.admit(key.as_deref(), seq, work);
            }
            Err(error) => {
                let wanted = match error.event_type() {
                    Some(event_type) => self.router.wants(&delivery.subject, event_type),
                    None => self.router.wants_subject(&delivery.subject),
                };
                if !wanted {
                    self.skip(&delivery, error.event_type().unwrap_or("unknown"))
                        .await;
                    return;
                }
                telemetry::validation_failure(&self.spec.source, error.reason());
                let _ = lanes.admit(None, seq, Work::Reject(delivery, error));
            }
        }
    }

    async fn skip(&self, delivery: &Delivery, event_type: &str) {
        let outcome = Outcome::Skipped;
        self.settler().settle(delivery, &outcome).await;
        telemetry::event(
            &self.spec.source,
            &self.spec.sink,
            event_type,
            outcome.label(),
        );
    }

    /// Starts what is ready, once the events left unacked by a previous
    /// process are back in the lanes (see `recovery.rs`).
    fn start_unless_recovering(
        self: &Arc<Self>,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
        tasks: &mut JoinSet<(Option<String>, u64, Completion)>,
    ) {
        if recovery
            .as_ref()
            .is_some_and(|recovery| recovery.holding(tokio::time::Instant::now()))
        {
            return;
        }
        if let Some(done) = recovery.take() {
            tracing::info!(
                consumer = %self.spec.durable_name,
                back = done.back(),
                leftovers = done.leftovers(),
                "Done waiting for the events left unacked before the restart"
            );
        }
        self.start_ready(lanes, tasks);
    }

    fn start_ready(
        self: &Arc<Self>,
        lanes: &mut Lanes<Work>,
        tasks: &mut JoinSet<(Option<String>, u64, Completion)>,
    ) {
        while let Some((key, seq, work, dispatch)) = lanes.next_ready() {
            let pipeline = Arc::clone(self);
            tasks.spawn(async move {
                let completion = pipeline.process(work, dispatch).await;
                (key, seq, completion)
            });
        }
    }

    /// Applies one event (or dead-letters it) and settles its delivery.
    async fn process(&self, work: Work, dispatch: Dispatch) -> Completion {
        let (delivery, event_type, outcome) = match (work, dispatch) {
            (Work::Reject(delivery, error), _) => {
                let event_type = error.event_type().unwrap_or("unknown").to_owned();
                let outcome = Outcome::DeadLetter {
                    reason: error.reason(),
                    error: error.to_string(),
                };
                (delivery, event_type, outcome)
            }
            (Work::Apply(event), Dispatch::Park) => {
                let outcome = Outcome::DeadLetter {
                    reason: DeadLetterReason::ParkedAfterFailure,
                    error: format!(
                        "an earlier event of aggregate {} was dead-lettered",
                        event.envelope.aggregate_id
                    ),
                };
                (event.delivery, event.envelope.event_type, outcome)
            }
            (Work::Apply(event), Dispatch::Apply) => {
                let outcome = self.apply(&event).await;
                (event.delivery, event.envelope.event_type, outcome)
            }
        };
        let completion = self.settler().settle(&delivery, &outcome).await;
        telemetry::event(
            &self.spec.source,
            &self.spec.sink,
            &event_type,
            outcome.label(),
        );
        let parks = matches!(
            outcome,
            Outcome::DeadLetter {
                reason: DeadLetterReason::MaxAttempts | DeadLetterReason::SinkRejected,
                ..
            }
        ) && self.settings.on_dead_letter == OnDeadLetter::ParkKey;
        match completion {
            Completion::Done if parks => Completion::DoneAndPark,
            other => other,
        }
    }

    /// Calls the sink, extending the ack deadline while it works.
    async fn apply(&self, event: &Event) -> Outcome {
        let started = std::time::Instant::now();
        let write = self.sink.apply(event);
        tokio::pin!(write);
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + self.progress_interval(),
            self.progress_interval(),
        );
        let result = loop {
            tokio::select! {
                result = &mut write => break result,
                _ = progress.tick() => outcome::progress(&event.delivery).await,
            }
        };
        telemetry::sink_duration(&self.spec.sink, started.elapsed());
        if result.is_ok() {
            let published = event.delivery.published;
            let age = time::OffsetDateTime::now_utc() - published;
            telemetry::end_to_end(&self.spec.sink, age.as_seconds_f64());
        } else if let Err(error) = &result {
            tracing::info!(
                sink = %self.spec.sink,
                stream_seq = event.delivery.stream_seq,
                attempt = event.delivery.attempt,
                error = %error,
                "Sink write failed"
            );
        }
        outcome::decide(
            &result,
            event.delivery.attempt,
            &self.settings.retry,
            self.settings.effective_ack_wait() / 2,
        )
    }

    fn settler(&self) -> Settler<'_> {
        Settler {
            sink: &self.spec.sink,
            dead_letters: &self.dead_letters,
        }
    }

    /// Progress acks go out three times per `ack_wait`.
    fn progress_interval(&self) -> Duration {
        (self.settings.effective_ack_wait() / 3).max(Duration::from_millis(100))
    }
}
