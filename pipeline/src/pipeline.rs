//! One (source, sink) consumer's loop, the data's path top to bottom:
//! message -> [`Delivery`] -> [`Envelope`] (decode, validate) -> route ->
//! lanes (per-aggregate order) -> upcast to the sink's version -> sink ->
//! [`Outcome`] -> ack / nak / dead letter.
//!
//! **Invariant:** the loop never acks by itself; every delivery it admits is
//! settled by `outcome.rs` after its sink answered (or is handed back, nak'd,
//! at shutdown).
//! **Invariant:** after a crash, new events wait in [`Recovery`] until the
//! deliveries the previous process left unacked have come back, so an
//! aggregate's order survives the crash; a loss noticed meanwhile, or a
//! window that ends with some still out, takes the recovery again from the
//! consumer's state.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::consumer::PullConsumer;
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConsumerSettings, OnDeadLetter, Ordering, PipelineSpec},
    dead_letter::{self, DeadLetterReason, DeadLetters, parked::Parked},
    envelope::{self, DecodeError, Decoder, Encoding, PayloadNeed},
    lanes::{Completion, Dispatch, Lanes},
    membership::{self, ActiveSet, Owned},
    outcome::{self, Outcome, Settler},
    route::Router,
    sink::{Event, Sink, SinkError},
    source::{self, Delivery, HeldBytes, SourceError},
    telemetry::{
        ConsumerMetrics, Readiness,
        traces::{ConsumerTracer, EventTrace},
    },
    text,
    upcast::Upcasters,
};

/// Everything one consumer's loop needs, shared with its event tasks.
pub struct Pipeline<S> {
    pub spec: PipelineSpec,
    pub settings: ConsumerSettings,
    pub router: Router,
    pub decoder: Arc<Decoder>,
    pub upcasters: Arc<Upcasters>,
    /// The sink's pinned version (`None`: the newest of each type).
    pub schema_version: Option<u32>,
    pub sink: Arc<S>,
    pub dead_letters: DeadLetters,
    pub metrics: ConsumerMetrics,
    /// Sends this consumer's acks.
    pub client: async_nats::Client,
    pub readiness: Arc<Readiness>,
    pub limits: crate::config::raw::LimitsConfig,
    /// The durable parked set, with `on_dead_letter: park_key` (opened when
    /// the consumer starts).
    pub parked: std::sync::OnceLock<Parked>,
    /// Whether the assignment gives this replica the partition (`None`:
    /// not partitioned).
    pub owned: Option<Owned>,
    /// The consumers this replica is active on, for its lease.
    pub active_set: ActiveSet,
    /// Whether the server's partition of an event has disagreed with its
    /// aggregate id's (warned once).
    pub partition_mismatch: std::sync::atomic::AtomicBool,
    /// Spans per event, with `tracing` on; `None` costs an event nothing.
    pub tracer: Option<ConsumerTracer>,
}

/// Deliveries taken from the pull stream in one go once one has arrived:
/// admitted together, then started together.
const ADMIT_BATCH: usize = 256;

/// Room in a pull's byte limit for a message's subject and headers beyond
/// the server's payload limit.
const BATCH_BYTES_SLACK: usize = 64 * 1024;

/// Time beyond a pull request's expiry for the server to have expired it.
const PULL_EXPIRY_SLACK: Duration = Duration::from_millis(500);

/// A delivery admitted to the lanes.
// `Apply` is the common case: boxing it to even the sizes would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Work {
    Apply(Event),
    Reject(Delivery, DecodeError, Option<Box<EventTrace>>),
}

impl Work {
    fn delivery(&self) -> &Delivery {
        match self {
            Work::Apply(event) => &event.delivery,
            Work::Reject(delivery, ..) => delivery,
        }
    }
}

/// Deliveries held back at start-up while the previous process's unacked
/// deliveries ("orphans") come back: the server redelivers those only when
/// their ack timers expire, but would hand out later events at once.
struct Recovery {
    /// The last stream sequence delivered before this process started.
    horizon: u64,
    /// Deliveries pending acknowledgement at start-up.
    orphans: usize,
    returned: HashSet<u64>,
    held: Vec<Delivery>,
    deadline: tokio::time::Instant,
}

impl Recovery {
    /// Taken when this replica becomes the consumer's active one (at start,
    /// or when it takes over from another): every delivery still pending
    /// then, whoever received it, must be in hand before anything is
    /// applied. `None` when nothing is pending or order does not matter.
    fn at_takeover(
        info: Option<&async_nats::jetstream::consumer::Info>,
        settings: &ConsumerSettings,
    ) -> Option<Self> {
        if settings.ordering == Ordering::None {
            return None;
        }
        // Without the consumer's state, wait out the whole window.
        let (horizon, orphans) = match info {
            Some(info) if info.num_ack_pending == 0 => return None,
            Some(info) => (info.delivered.stream_sequence, info.num_ack_pending),
            None => (u64::MAX, usize::MAX),
        };
        Some(Self {
            horizon,
            orphans,
            returned: HashSet::new(),
            held: Vec::new(),
            deadline: tokio::time::Instant::now() + settings.recovery_window(),
        })
    }

    /// Holds a delivery; true once every orphan has come back.
    fn hold(&mut self, delivery: Delivery) -> bool {
        if delivery.stream_seq <= self.horizon {
            self.returned.insert(delivery.stream_seq);
        }
        self.held.push(delivery);
        self.out() == 0
    }

    /// Deliveries pending when it was taken that are not in hand yet.
    fn out(&self) -> usize {
        self.orphans.saturating_sub(self.returned.len())
    }

    /// Hands what this recovery holds, and its deadline, to `fresh`, taken
    /// from the consumer's state later; whether every delivery pending then
    /// is in hand.
    fn carry_into(self, fresh: &mut Recovery) -> bool {
        fresh.deadline = self.deadline;
        for delivery in self.held {
            fresh.hold(delivery);
        }
        fresh.out() == 0
    }

    /// The held deliveries in stream order.
    fn release(mut self) -> Vec<Delivery> {
        self.held.sort_by_key(|delivery| delivery.stream_seq);
        self.held
    }
}

impl<S: Sink> Pipeline<S> {
    /// Binds the durable consumer, then reads, applies and settles until
    /// `shutdown`; then finishes what is in flight and hands the rest back.
    pub async fn run(
        self: Arc<Self>,
        jetstream: async_nats::jetstream::Context,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let consumer = source::bind(&jetstream, &self.spec, &self.settings).await?;
        if self.settings.on_dead_letter == OnDeadLetter::ParkKey {
            let parked = Parked::open(
                &jetstream,
                self.dead_letters.stream(),
                &self.spec.durable_name,
            )
            .await
            .map_err(|error| SourceError::Consumer {
                stream: self.spec.stream.clone(),
                consumer: self.spec.durable_name.clone(),
                message: error.to_string(),
            })?;
            let _ = self.parked.set(parked);
        }
        let mut recovery: Option<Recovery> = None;
        // Standby until the server delivers to this replica: then it holds
        // the consumer's pin, and the others stand by.
        let mut active: Option<Active> = None;
        self.readiness.consumer_bound();
        self.mark_active(false);
        tracing::info!(
            source = %self.spec.source,
            sink = %self.spec.sink,
            consumer = %self.spec.durable_name,
            "Consumer bound; active once the server delivers to this replica"
        );
        let stream_name: Arc<str> = Arc::from(self.spec.stream.as_str());
        let mut lanes: Lanes<Work> = Lanes::new(self.settings.concurrency);
        // The events being applied, polled by this task: no task is spawned
        // per event.
        let mut in_flight = FuturesUnordered::new();
        let mut progress = tokio::time::interval(self.progress_interval());
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages = None;
        // Bodies received and not settled, bounded by `max_bytes_in_flight`;
        // a pull asks for a quarter of it, but never less than the largest
        // message the server takes, which could otherwise never be delivered.
        let held = HeldBytes::default();
        let batch_bytes = (self.limits.max_bytes_in_flight / 4)
            .max(self.client.server_info().max_payload + BATCH_BYTES_SLACK);

        // Partitioned, this replica pulls only while the assignment gives
        // it this partition; otherwise always (the pin decides who gets it).
        let mut owned = self.owned.clone();
        loop {
            let pulling = owned.as_ref().is_none_or(|owned| *owned.borrow());
            if pulling && messages.is_none() {
                match source::messages(
                    &consumer,
                    &self.settings,
                    batch_bytes,
                    &self.spec.durable_name,
                )
                .await
                {
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
            let recovery_deadline = recovery.as_ref().map(|r| r.deadline);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // A partition counts as active where it is assigned: the
                // pin follows once the previous owner has handed it back.
                mine = ownership_change(&mut owned) => {
                    if mine {
                        tracing::info!(consumer = %self.spec.durable_name, "Partition assigned to this replica");
                        self.mark_active(true);
                    } else {
                        if messages.is_some() || active.is_some() {
                            tracing::info!(consumer = %self.spec.durable_name, "Partition assigned to another replica; handing it over");
                            self.hand_back(&jetstream, &stream_name, &held, &mut messages, &mut lanes, &mut in_flight, &mut recovery, &mut active).await;
                        }
                        self.mark_active(false);
                    }
                }
                _ = sleep_until(recovery_deadline) => {
                    if recovery.is_some() {
                        // By now every orphan has come back unless the
                        // server could not redeliver it meanwhile (a NATS
                        // node down): the consumer's state says.
                        self.recount(&consumer, &mut recovery, &mut lanes).await;
                        match recovery.as_mut() {
                            Some(again) => {
                                again.deadline = tokio::time::Instant::now() + self.settings.recovery_window();
                                tracing::warn!(consumer = %self.spec.durable_name, waiting_for = again.out(), "Recovery window over with deliveries still out; waiting another window");
                            }
                            None => tracing::info!(consumer = %self.spec.durable_name, "Recovery window over"),
                        }
                        self.start_ready(&mut lanes, &mut in_flight);
                    }
                }
                Some((key, seq, completion)) = in_flight.next() => {
                    lanes.complete(key, seq, completion);
                    // Settle everything that finished meanwhile before
                    // starting more, so ready keys are started together.
                    while let Some(Some((key, seq, completion))) = in_flight.next().now_or_never() {
                        lanes.complete(key, seq, completion);
                    }
                    // Nothing starts after a reconnect before the pin is
                    // known to be this replica's still.
                    let _ = self.after_reconnect(&consumer, &mut active, &mut recovery, &mut lanes).await;
                    self.start_ready(&mut lanes, &mut in_flight);
                }
                // Past the byte budget, settle before reading more; while
                // recovering, read on: the orphans must come back, and
                // `max_ack_pending` bounds what is held meanwhile.
                message = next_message(&mut messages), if self.may_read(&held, recovery.is_some()) => match message {
                    Some(Ok(message)) => {
                        let _ = self.after_reconnect(&consumer, &mut active, &mut recovery, &mut lanes).await;
                        // What the client already holds is admitted at once.
                        // Every message taken from the stream is received: one
                        // taken and then dropped would come back only after
                        // `ack_wait`, behind its aggregate's later events.
                        let mut next = Some(message);
                        let mut admitted = 0;
                        while let Some(message) = next.take() {
                            match Delivery::from_message(&stream_name, message, &held) {
                                Ok(delivery) => {
                                    self.follow_pin(&consumer, &delivery, &mut active, &mut recovery, &mut lanes).await;
                                    self.after_gap(&consumer, delivery.consumer_seq, &mut active, &mut recovery, &mut lanes).await;
                                    self.receive(delivery, &mut recovery, &mut lanes).await;
                                }
                                Err(error) => tracing::warn!(error = %error, "Message ignored"),
                            }
                            admitted += 1;
                            if admitted == ADMIT_BATCH || !self.may_read(&held, recovery.is_some()) {
                                break;
                            }
                            let Some(stream) = messages.as_mut() else {
                                break;
                            };
                            match stream.next().now_or_never() {
                                Some(Some(Ok(message))) => next = Some(message),
                                Some(Some(Err(error))) => {
                                    tracing::warn!(consumer = %self.spec.durable_name, error = %error, "Pull error");
                                }
                                Some(None) => {
                                    messages = None;
                                    break;
                                }
                                None => {}
                            }
                        }
                        self.start_ready(&mut lanes, &mut in_flight);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(consumer = %self.spec.durable_name, error = %error, "Pull error");
                    }
                    None => messages = None,
                },
                _ = progress.tick() => {
                    // After a reconnect the recovery was counted just now.
                    if !self.after_reconnect(&consumer, &mut active, &mut recovery, &mut lanes).await {
                        self.check_pin(&consumer, &mut active, &mut recovery, &mut lanes).await;
                        // What the previous owner acked after the count
                        // never comes back: the state now may show nothing out.
                        if recovery.is_some() {
                            self.recount(&consumer, &mut recovery, &mut lanes).await;
                            if recovery.is_none() {
                                tracing::info!(consumer = %self.spec.durable_name, "Recovery over: every pending delivery is in hand");
                            }
                        }
                    }
                    self.start_ready(&mut lanes, &mut in_flight);
                    for work in lanes.waiting() {
                        outcome::progress(&self.client, work.delivery()).await;
                    }
                    for delivery in recovery.iter().flat_map(|r| r.held.iter()) {
                        outcome::progress(&self.client, delivery).await;
                    }
                }
            }
        }

        self.hand_back(
            &jetstream,
            &stream_name,
            &held,
            &mut messages,
            &mut lanes,
            &mut in_flight,
            &mut recovery,
            &mut active,
        )
        .await;
        tracing::info!(consumer = %self.spec.durable_name, "Consumer stopped");
        Ok(())
    }

    /// Stops applying, at shutdown or when the partition moves: finishes
    /// what is in flight, then hands back what has not started. It first
    /// takes what the client already holds and stops pulling, so the nak'd
    /// messages wait on the server for the next owner instead of coming
    /// back here; then it releases the pin, so the next owner need not
    /// wait `takeover_after`.
    #[allow(clippy::too_many_arguments)]
    async fn hand_back<'a>(
        &'a self,
        jetstream: &async_nats::jetstream::Context,
        stream_name: &Arc<str>,
        held: &HeldBytes,
        messages: &mut Option<async_nats::jetstream::consumer::pull::Stream>,
        lanes: &mut Lanes<Work>,
        in_flight: &mut FuturesUnordered<InFlight<'a>>,
        recovery: &mut Option<Recovery>,
        active: &mut Option<Active>,
    ) {
        while let Some((key, seq, completion)) = in_flight.next().await {
            lanes.complete(key, seq, completion);
        }
        let mut unread = Vec::new();
        if let Some(mut stream) = messages.take() {
            while let Some(Some(Ok(message))) = stream.next().now_or_never() {
                if let Ok(delivery) = Delivery::from_message(stream_name, message, held) {
                    unread.push(delivery);
                }
            }
        }
        let kept = recovery.take().map(Recovery::release).unwrap_or_default();
        tracing::debug!(consumer = %self.spec.durable_name, unread = unread.len(), kept = kept.len(), "Handing back");
        for delivery in lanes
            .drain_waiting()
            .iter()
            .map(Work::delivery)
            .chain(&kept)
            .chain(&unread)
        {
            outcome::release(&self.client, delivery).await;
        }
        if active.take().is_some() {
            self.mark_active(false);
            // Pull requests this replica sent are still open on the server
            // until they expire: unpinned now, the server could pin one of
            // them and deliver into an inbox nobody reads, after the next
            // owner has counted what is pending. Once they have expired,
            // everything delivered here is pending when it counts.
            tokio::time::sleep(self.settings.pull_expiry() + PULL_EXPIRY_SLACK).await;
            if let Ok(stream) = jetstream.get_stream(&self.spec.stream).await {
                let _ = stream
                    .unpin_consumer(&self.spec.durable_name, source::PRIORITY_GROUP)
                    .await;
            }
        }
    }

    /// This replica is (or stops being) the one applying this consumer.
    fn mark_active(&self, active: bool) {
        self.metrics.active(active);
        self.active_set.set(&self.spec.durable_name, active);
    }

    /// Whether to read more: under the byte budget, or recovering.
    fn may_read(&self, held: &HeldBytes, recovering: bool) -> bool {
        recovering || held.get() < self.limits.max_bytes_in_flight
    }

    /// The client's connection count: a change is a reconnect.
    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Recovery as a replica becoming active needs it, from the consumer's
    /// state now.
    async fn recovery(&self, consumer: &PullConsumer) -> Option<Recovery> {
        let info = consumer.get_info().await.ok();
        Recovery::at_takeover(info.as_ref(), &self.settings)
    }

    /// After a reconnect, noticed by whichever comes first (a message, a
    /// completion or the progress tick): while the connection was down the
    /// pin may have expired and gone to another replica, so the pin is
    /// checked at once; and what the server sent while the connection was
    /// down comes back only after `ack_wait` while later events arrive now,
    /// so new events wait as after a takeover. Whether it checked the pin.
    async fn after_reconnect(
        &self,
        consumer: &PullConsumer,
        active: &mut Option<Active>,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) -> bool {
        let connects = self.connects();
        let Some(state) = active.as_mut().filter(|active| active.connects != connects) else {
            return false;
        };
        state.connects = connects;
        let waiting_for = self.hold_new_events(consumer, recovery, lanes).await;
        tracing::warn!(
            consumer = %self.spec.durable_name,
            waiting_for,
            "Reconnected to NATS; holding new events until what was in transit has come back"
        );
        self.check_pin(consumer, active, recovery, lanes).await;
        true
    }

    /// Stands by when the server no longer pins the client this replica
    /// was pinned as: another replica holds the consumer now, or will once
    /// it pulls.
    async fn check_pin(
        &self,
        consumer: &PullConsumer,
        active: &mut Option<Active>,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) {
        let Some(pin_id) = active.as_ref().and_then(|a| a.pin_id.as_deref()) else {
            return;
        };
        if self.pin_lost(consumer, pin_id).await {
            tracing::warn!(consumer = %self.spec.durable_name, "The server no longer pins this replica; standing by");
            self.stand_by(lanes, recovery, active).await;
        }
    }

    /// Follows the pin a delivery carries. The first delivery makes this
    /// replica active. A pin other than the one it knew means the pin was
    /// lost and given again: another replica may have applied events
    /// meanwhile, so what has not started goes back and recovery starts
    /// over, as at a takeover.
    async fn follow_pin(
        &self,
        consumer: &PullConsumer,
        delivery: &Delivery,
        active: &mut Option<Active>,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) {
        let pin = pin_of(delivery);
        if let (Some(known), Some(pin)) = (active.as_ref().and_then(|a| a.pin_id.as_deref()), pin)
            && known != pin
        {
            tracing::warn!(consumer = %self.spec.durable_name, "Pinned again under a new id; recovering as at a takeover");
            self.stand_by(lanes, recovery, active).await;
        }
        if active.is_some() {
            return;
        }
        *recovery = self.recovery(consumer).await;
        *active = Some(Active {
            pin_id: pin.map(str::to_owned),
            connects: self.connects(),
            consumer_seq: None,
        });
        self.mark_active(true);
        self.restore_parked(lanes).await;
        tracing::info!(
            consumer = %self.spec.durable_name,
            waiting_for = recovery.as_ref().map_or(0, |r| r.orphans),
            "Consumer active on this replica"
        );
    }

    /// Stops applying without the pin: what has not started goes back to
    /// the server, for the recovery of whoever holds the pin now; events
    /// in flight finish.
    async fn stand_by(
        &self,
        lanes: &mut Lanes<Work>,
        recovery: &mut Option<Recovery>,
        active: &mut Option<Active>,
    ) {
        let held = recovery.take().map(Recovery::release).unwrap_or_default();
        for delivery in lanes
            .drain_waiting()
            .iter()
            .map(Work::delivery)
            .chain(&held)
        {
            outcome::release(&self.client, delivery).await;
        }
        *active = None;
        // A partition still assigned here counts as active: this replica
        // pulls it, and the pin comes back with the next delivery.
        self.mark_active(self.assigned());
    }

    /// Whether the assignment gives this replica the partition (false for
    /// a consumer that is not partitioned: the pin alone decides).
    fn assigned(&self) -> bool {
        self.owned.as_ref().is_some_and(|owned| *owned.borrow())
    }

    /// Holds new events until what is pending now has come back. A
    /// recovery under way is taken again from the state now: what was lost
    /// since it started is pending too, and must come back before it ends.
    /// How many deliveries it waits for.
    async fn hold_new_events(
        &self,
        consumer: &PullConsumer,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) -> usize {
        match recovery {
            Some(_) => self.recount(consumer, recovery, lanes).await,
            None => *recovery = self.recovery(consumer).await,
        }
        recovery.as_ref().map_or(0, Recovery::out)
    }

    /// Takes the recovery under way, if any, again from the consumer's
    /// state now, with what it holds; admits what it holds once nothing
    /// pending is out.
    async fn recount(
        &self,
        consumer: &PullConsumer,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) {
        let Some(earlier) = recovery.take() else {
            return;
        };
        match self.recovery(consumer).await {
            Some(mut fresh) => {
                if earlier.carry_into(&mut fresh) {
                    self.admit_held(fresh, lanes).await;
                } else {
                    *recovery = Some(fresh);
                }
            }
            None => self.admit_held(earlier, lanes).await,
        }
    }

    /// A gap in the consumer sequence while active: deliveries the server
    /// sent this replica were lost in transit (a NATS node, or the
    /// consumer's leader, went down between the two without this client's
    /// connection dropping). The server redelivers them only after
    /// `ack_wait` while later events arrive now, so new events wait as
    /// after a reconnect.
    async fn after_gap(
        &self,
        consumer: &PullConsumer,
        consumer_seq: u64,
        active: &mut Option<Active>,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) {
        let Some(lost) = active
            .as_mut()
            .and_then(|active| active.note_consumer_seq(consumer_seq))
        else {
            return;
        };
        let waiting_for = self.hold_new_events(consumer, recovery, lanes).await;
        tracing::warn!(
            consumer = %self.spec.durable_name,
            lost,
            waiting_for,
            "Deliveries lost in transit; holding new events until they have come back"
        );
    }

    /// Whether the server pins another client than `pin_id`, or none (a
    /// lost lookup says no: the next tick asks again).
    async fn pin_lost(&self, consumer: &PullConsumer, pin_id: &str) -> bool {
        let Ok(info) = consumer.get_info().await else {
            return false;
        };
        let pinned = info
            .priority_groups
            .iter()
            .find(|group| group.group == source::PRIORITY_GROUP)
            .and_then(|group| group.pinned_client_id.as_deref());
        pinned != Some(pin_id)
    }

    /// Parks again, on becoming active, what the parked set holds.
    async fn restore_parked(&self, lanes: &mut Lanes<Work>) {
        let Some(parked) = self.parked.get() else {
            return;
        };
        match parked.load().await {
            Ok(aggregates) => {
                for aggregate_id in &aggregates {
                    lanes.park(aggregate_id);
                }
                if !aggregates.is_empty() {
                    tracing::info!(consumer = %self.spec.durable_name, parked = aggregates.len(), "Parked aggregates restored");
                }
            }
            Err(error) => {
                tracing::error!(consumer = %self.spec.durable_name, error = %error, "Cannot read the parked aggregates");
            }
        }
    }

    /// Admits a delivery, or holds it while recovery waits for what a
    /// previous run left unacked.
    async fn receive(
        &self,
        delivery: Delivery,
        recovery: &mut Option<Recovery>,
        lanes: &mut Lanes<Work>,
    ) {
        match recovery.as_mut() {
            Some(held) => {
                if held.hold(delivery)
                    && let Some(done) = recovery.take()
                {
                    self.admit_held(done, lanes).await;
                }
            }
            None => self.admit(delivery, lanes).await,
        }
    }

    /// Admits, in stream order, what recovery held back.
    async fn admit_held(&self, recovery: Recovery, lanes: &mut Lanes<Work>) {
        for delivery in recovery.release() {
            self.admit(delivery, lanes).await;
        }
    }

    /// Decodes and routes a delivery, then queues it behind its aggregate.
    async fn admit(&self, delivery: Delivery, lanes: &mut Lanes<Work>) {
        let seq = delivery.stream_seq;
        if !self.in_partition(&delivery) {
            outcome::pass(&self.client, &delivery).await;
            return;
        }
        if dead_letter::redrive_sink(delivery.headers.as_ref())
            .is_some_and(|sink| sink != self.spec.sink)
        {
            // Redriven for another sink: this one applied it already.
            let event_type = envelope::peek(delivery.content_type(), &delivery.body)
                .map(|peek| peek.event_type)
                .unwrap_or_default();
            self.skip(&delivery, &event_type).await;
            return;
        }
        // Clock reads for the decode span only with tracing on.
        let decode_started = self.tracer.as_ref().map(|_| SystemTime::now());
        let decoded = Encoding::from_content_type(delivery.content_type()).and_then(|encoding| {
            // A payload is only validated where it reaches the sink's
            // version without decoding: a sink that writes bytes then
            // takes it as it is; one that reads fields has them decoded at
            // its version (`process`), only those it names where it does.
            let takes_encoded =
                self.sink.passes_through(encoding) || self.sink.payload_fields().is_some();
            let need = |event_type: &str, version: u32| match self.upcasters.on_wire(
                event_type,
                version,
                self.schema_version,
            ) {
                Some(true) => PayloadNeed::Valid,
                Some(false) if takes_encoded => PayloadNeed::Valid,
                _ => PayloadNeed::Message,
            };
            let envelope = self.decoder.decode_for(encoding, &delivery.body, need)?;
            Ok((envelope, encoding))
        });
        let decode_time = decode_started.map(|started| (started, SystemTime::now()));
        match decoded {
            Ok((envelope, encoding)) => {
                self.check_partition(&delivery.subject, &envelope.aggregate_id);
                if !self.router.wants(&delivery.subject, &envelope.event_type) {
                    self.skip(&delivery, &envelope.event_type).await;
                    return;
                }
                let key: Option<Arc<str>> = match self.settings.ordering {
                    Ordering::PerKey => Some(envelope.aggregate_id.as_str().into()),
                    Ordering::None => None,
                };
                if let Some(key) = key.as_deref()
                    && dead_letter::is_redriven(delivery.headers.as_ref())
                    && lanes.unpark(key)
                {
                    // A redriven event of a parked aggregate: the operator
                    // took the aggregate back.
                    if let Some(parked) = self.parked.get()
                        && let Err(error) = parked.unpark(key).await
                    {
                        tracing::error!(consumer = %self.spec.durable_name, error = %error, "Cannot unpark");
                    }
                    tracing::info!(consumer = %self.spec.durable_name, stream_seq = seq, "Aggregate unparked by a redriven event");
                }
                let trace = self.trace(&delivery, decode_time, Ok(&envelope));
                let work = Work::Apply(Event {
                    envelope,
                    delivery,
                    original: Some(encoding),
                    trace,
                });
                // A duplicate of an event in flight is dropped: the running
                // one settles it.
                let _ = lanes.admit(key, seq, work);
            }
            Err(error) => {
                if !self
                    .router
                    .wants_undecoded(&delivery.subject, error.event_type())
                {
                    let event_type = error.event_type().unwrap_or_default();
                    self.skip(&delivery, event_type).await;
                    return;
                }
                self.metrics.validation_failure(error.reason());
                let trace = self.trace(&delivery, decode_time, Err(error.reason().as_str()));
                let _ = lanes.admit(None::<&str>, seq, Work::Reject(delivery, error, trace));
            }
        }
    }

    /// The spans of an event this consumer applies or dead-letters, opened
    /// once it is decoded (`decode_time` is `None` with tracing off).
    fn trace(
        &self,
        delivery: &Delivery,
        decode_time: Option<(SystemTime, SystemTime)>,
        decoded: Result<&envelope::Envelope, &str>,
    ) -> Option<Box<EventTrace>> {
        let (tracer, decode_time) = self.tracer.as_ref().zip(decode_time)?;
        Some(tracer.event(delivery, decode_time, decoded))
    }

    /// Whether the delivery's aggregate is in this consumer's partition;
    /// one without a readable aggregate id is partition 0's, which
    /// dead-letters it. Where the server partitions by subject, every
    /// delivery is (see [`Pipeline::check_partition`]).
    fn in_partition(&self, delivery: &Delivery) -> bool {
        let partition = self.spec.partition;
        if partition.count <= 1 || partition.by_subject {
            return true;
        }
        envelope::aggregate_id(delivery.content_type(), &delivery.body)
            .map(|id| membership::partition_of(id.as_bytes(), partition.count))
            .map_or(partition.index == 0, |hashed| hashed == partition.index)
    }

    /// Where the server partitions by subject, warns once of an event whose
    /// aggregate id hashes to another partition: the subject's token is not
    /// the aggregate id, or the stream's `partition()` count is not
    /// `partitions`, and per-aggregate order is not guaranteed.
    fn check_partition(&self, subject: &str, aggregate_id: &str) {
        let partition = self.spec.partition;
        if partition.count > 1
            && partition.by_subject
            && membership::partition_of(aggregate_id.as_bytes(), partition.count) != partition.index
            && !self
                .partition_mismatch
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                consumer = %self.spec.durable_name,
                subject = %text::cut(subject, text::LOGGED_CHARS),
                "The stream put an event in another partition than its aggregate id's: per-aggregate order needs the partition token to be computed from the aggregate id, with `partitions` partitions"
            );
        }
    }

    /// Acks a delivery this sink does not want; `event_type` is a label.
    async fn skip(&self, delivery: &Delivery, event_type: &str) {
        self.settler()
            .settle(delivery, event_type, &Outcome::Skipped)
            .await;
    }

    /// Starts every event the lanes allow.
    fn start_ready<'a>(
        &'a self,
        lanes: &mut Lanes<Work>,
        in_flight: &mut FuturesUnordered<InFlight<'a>>,
    ) {
        while let Some((key, seq, work, dispatch)) = lanes.next_ready() {
            in_flight.push(Box::pin(async move {
                let completion = self.process(work, dispatch, key.as_deref()).await;
                (key, seq, completion)
            }));
        }
    }

    /// Applies one event (or dead-letters it) and settles its delivery;
    /// `key` is its lane's (the aggregate id with `per_key` ordering).
    async fn process(&self, work: Work, dispatch: Dispatch, key: Option<&str>) -> Completion {
        let (delivery, event_type, outcome, trace) = match (work, dispatch) {
            (Work::Reject(delivery, error, trace), _) => {
                let event_type = error.event_type().unwrap_or_default().to_owned();
                let outcome = Outcome::DeadLetter {
                    reason: error.reason(),
                    error: error.to_string(),
                };
                (delivery, event_type, outcome, trace)
            }
            (Work::Apply(event), Dispatch::Park) => {
                let outcome = Outcome::DeadLetter {
                    reason: DeadLetterReason::ParkedAfterFailure,
                    error: format!(
                        "an earlier event of aggregate {} was dead-lettered",
                        event.envelope.aggregate_id
                    ),
                };
                (
                    event.delivery,
                    event.envelope.event_type,
                    outcome,
                    event.trace,
                )
            }
            (Work::Apply(mut event), Dispatch::Apply) => {
                // Upcast here rather than at decode: each sink has its own
                // target version, and a failure is this sink's dead letter.
                let upcast_started = event.trace.as_ref().map(|_| SystemTime::now());
                let upcast = self
                    .upcasters
                    .upcast(&mut event.envelope, self.schema_version);
                if let (Some(trace), Some(started)) = (event.trace.as_deref(), upcast_started) {
                    match &upcast {
                        Ok(None) => {}
                        Ok(Some(hop)) => trace.upcast(started, Ok(*hop)),
                        Err(error) => trace.upcast(started, Err(&error.to_string())),
                    }
                }
                let outcome = match upcast {
                    Ok(upcast) => {
                        if let Some((from, _)) = upcast {
                            self.metrics.upcast(&event.envelope.event_type, from);
                            event.original = None;
                        }
                        // Held encoded, for a sink that reads fields.
                        let readable = if event.envelope.encoded_payload.is_none()
                            || self.sink.passes_through(Encoding::Protobuf)
                        {
                            Ok(())
                        } else if let Some(names) = self.sink.payload_fields() {
                            event.envelope.decode_payload_fields(names)
                        } else {
                            event.envelope.decode_payload()
                        };
                        match readable {
                            Ok(()) => self.apply(&mut event).await,
                            Err(error) => Outcome::DeadLetter {
                                reason: DeadLetterReason::InvalidPayload,
                                error: format!("the payload does not decode: {error}"),
                            },
                        }
                    }
                    Err(error) => Outcome::DeadLetter {
                        reason: DeadLetterReason::UpcastFailed,
                        error: error.to_string(),
                    },
                };
                (
                    event.delivery,
                    event.envelope.event_type,
                    outcome,
                    event.trace,
                )
            }
        };
        let parks = matches!(
            outcome,
            Outcome::DeadLetter {
                reason: DeadLetterReason::MaxAttempts | DeadLetterReason::SinkRejected,
                ..
            }
        ) && self.settings.on_dead_letter == OnDeadLetter::ParkKey;
        // Recorded before the event is terminated, so a crash cannot forget
        // the park; if it cannot be recorded, the event comes back.
        let mut outcome = outcome;
        if parks && let (Some(parked), Some(aggregate_id)) = (self.parked.get(), key) {
            match parked.park(aggregate_id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(consumer = %self.spec.durable_name, "Aggregate id too long to park durably; parked in memory only")
                }
                Err(error) => {
                    tracing::error!(consumer = %self.spec.durable_name, error = %error, "Cannot record the parked aggregate; the event will come back");
                    outcome = Outcome::Retry {
                        after: Duration::from_secs(1),
                    };
                }
            }
        }
        let completion = self
            .settler()
            .settle(&delivery, &event_type, &outcome)
            .await;
        if let Some(trace) = trace {
            trace.finish(&outcome, outcome.settled_as(completion));
        }
        match completion {
            Completion::Done if parks => Completion::DoneAndPark,
            other => other,
        }
    }

    /// Calls the sink, extending the ack deadline while it works.
    async fn apply(&self, event: &mut Event) -> Outcome {
        if let Some(trace) = event.trace.as_mut() {
            trace.start_write();
        }
        let started = std::time::Instant::now();
        let result = {
            let event = &*event;
            // A panic in a sink stays this event's failure: the futures share
            // the consumer's task, which would otherwise die with it.
            let write = std::panic::AssertUnwindSafe(self.sink.apply(event)).catch_unwind();
            tokio::pin!(write);
            loop {
                // A timer per event only while it is being written, in place:
                // no allocation, and only slow writes ever see it fire.
                tokio::select! {
                    biased;
                    result = &mut write => break result.unwrap_or_else(|panic| Err(SinkError::Panicked(panic_message(panic.as_ref())))),
                    _ = tokio::time::sleep(self.progress_interval()) => {
                        outcome::progress(&self.client, &event.delivery).await;
                    }
                }
            }
        };
        self.metrics.sink_duration(started.elapsed());
        if let Some(trace) = event.trace.as_mut() {
            trace.end_write(&result);
        }
        match &result {
            Ok(_) => {
                let age = time::OffsetDateTime::now_utc() - event.delivery.published;
                self.metrics.end_to_end(age.as_seconds_f64());
            }
            Err(error) => tracing::warn!(
                sink = %self.spec.sink,
                stream_seq = event.delivery.stream_seq,
                attempt = event.delivery.attempt,
                error = %text::cut(&error.to_string(), text::LOGGED_CHARS),
                "Sink write failed"
            ),
        }
        outcome::decide(
            &result,
            event.delivery.attempt,
            &self.settings.retry,
            self.settings.ack_wait,
        )
    }

    fn settler(&self) -> Settler<'_> {
        Settler {
            client: &self.client,
            sink: &self.spec.sink,
            dead_letters: &self.dead_letters,
            metrics: &self.metrics,
            readiness: &self.readiness,
        }
    }

    /// Progress acks go out three times per `ack_wait`.
    fn progress_interval(&self) -> Duration {
        (self.settings.ack_wait / 3).max(Duration::from_millis(100))
    }
}

/// This replica holds the consumer's pin.
struct Active {
    /// The pin, as the server stamps it on each message delivered.
    pin_id: Option<String>,
    /// The client's connection count when last seen: a change is a reconnect.
    connects: u64,
    /// The highest consumer sequence received: every delivery of the
    /// consumer comes to the pinned client, one sequence after another.
    consumer_seq: Option<u64>,
}

impl Active {
    /// Notes a delivery's consumer sequence; how many deliveries before it
    /// never arrived, when some did not.
    fn note_consumer_seq(&mut self, seq: u64) -> Option<u64> {
        let lost = self
            .consumer_seq
            .and_then(|last| seq.checked_sub(last + 1))
            .filter(|&lost| lost > 0);
        self.consumer_seq = Some(self.consumer_seq.map_or(seq, |last| last.max(seq)));
        lost
    }
}

/// The `Nats-Pin-Id` the server stamped on a delivery.
fn pin_of(delivery: &Delivery) -> Option<&str> {
    delivery
        .headers
        .as_ref()?
        .get_last(async_nats::header::NATS_PIN_ID)
        .map(|value| value.as_str())
}

/// One event being applied and settled; yields what the lanes need back.
type InFlight<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Option<Arc<str>>, u64, Completion)> + Send + 'a>,
>;

/// What a caught panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    text::cut(text, text::LOGGED_CHARS).into_owned()
}

/// The next message of the pull, or never while not pulling.
async fn next_message(
    messages: &mut Option<async_nats::jetstream::consumer::pull::Stream>,
) -> Option<
    Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Whether this replica now owns the partition, when that changes; never
/// for a consumer that is not partitioned (or once the assignment is no
/// longer kept, at shutdown).
async fn ownership_change(owned: &mut Option<Owned>) -> bool {
    let Some(receiver) = owned.as_mut() else {
        return std::future::pending().await;
    };
    match receiver.changed().await {
        Ok(()) => *receiver.borrow_and_update(),
        Err(_) => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_the_consumer_sequence_counts_the_deliveries_lost() {
        let mut active = Active {
            pin_id: None,
            connects: 1,
            consumer_seq: None,
        };
        assert_eq!(active.note_consumer_seq(7), None, "the first sets the mark");
        assert_eq!(active.note_consumer_seq(8), None);
        assert_eq!(
            active.note_consumer_seq(12),
            Some(3),
            "9, 10 and 11 never came"
        );
        assert_eq!(active.note_consumer_seq(13), None);
        // An older sequence (a stale pull's delivery) neither lowers the
        // mark nor counts as a loss.
        assert_eq!(active.note_consumer_seq(10), None);
        assert_eq!(active.note_consumer_seq(14), None);
    }

    fn recovery(horizon: u64, orphans: usize) -> Recovery {
        Recovery {
            horizon,
            orphans,
            returned: HashSet::new(),
            held: Vec::new(),
            deadline: tokio::time::Instant::now(),
        }
    }

    fn delivery(stream_seq: u64) -> Delivery {
        Delivery::detached(
            "S",
            "s".into(),
            async_nats::HeaderMap::new(),
            bytes::Bytes::new(),
            stream_seq,
        )
    }

    fn seqs(recovery: Recovery) -> Vec<u64> {
        recovery.release().iter().map(|d| d.stream_seq).collect()
    }

    #[test]
    fn a_recovery_counts_only_what_was_delivered_before_it() {
        let mut waiting = recovery(10, 2);
        assert!(!waiting.hold(delivery(12)), "a new event is no orphan");
        assert!(!waiting.hold(delivery(7)));
        assert!(!waiting.hold(delivery(7)), "a second delivery counts once");
        assert_eq!(waiting.out(), 1);
        assert!(waiting.hold(delivery(4)));
        assert_eq!(seqs(waiting), [4, 7, 7, 12], "released in stream order");
    }

    #[test]
    fn a_recovery_taken_again_waits_for_what_was_lost_meanwhile() {
        // 4 and 5 came back; 11 to 13 were delivered afterwards and lost.
        let mut earlier = recovery(10, 3);
        earlier.hold(delivery(4));
        earlier.hold(delivery(5));
        let deadline = earlier.deadline;
        let mut again = recovery(13, 6);
        again.deadline = deadline + Duration::from_secs(60);
        assert!(!earlier.carry_into(&mut again));
        assert_eq!(again.out(), 4);
        assert_eq!(again.deadline, deadline, "the first window still ends it");
        assert!(!again.hold(delivery(14)), "the first event after the loss");
        for seq in [6, 11, 12] {
            assert!(!again.hold(delivery(seq)), "{seq}");
        }
        assert!(again.hold(delivery(13)));
        assert_eq!(seqs(again), [4, 5, 6, 11, 12, 13, 14]);
    }

    #[test]
    fn a_recovery_taken_again_ends_when_everything_pending_is_in_hand() {
        // The previous owner acked the third orphan after the first count.
        let mut earlier = recovery(10, 3);
        earlier.hold(delivery(4));
        earlier.hold(delivery(5));
        earlier.hold(delivery(11));
        let mut again = recovery(11, 3);
        assert!(earlier.carry_into(&mut again));
        assert_eq!(seqs(again), [4, 5, 11]);
        // Nothing held and nothing pending: complete at once.
        assert!(recovery(10, 2).carry_into(&mut recovery(10, 0)));
    }
}
