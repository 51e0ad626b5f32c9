//! Scenario 4: the webhook takes 5 s for each of one aggregate's first five
//! events, longer than `ack_wait` (3 s). The other aggregates keep flowing
//! meanwhile, and the slow events are not redelivered (progress acks keep
//! their ack timers from expiring): the webhook sees each once, and the
//! server counts no redelivery on the webhook's consumer.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use async_nats::jetstream::consumer::pull;

use super::{
    accounting::Report,
    model::{Content, PoisonMix},
    world::{HOOK, SINKS, SOURCE_STREAM, World, durable, wait_until},
};

const SLOW_AGGREGATE: &str = "order-0000";
const SLOW_EVENTS: usize = 5;
const DELAY: Duration = Duration::from_secs(5);
/// Other events that must be applied while the slow ones are (unless all
/// of the others were done before the slow ones ended).
const OTHERS_DURING: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_slow_aggregate_holds_only_itself_and_is_not_redelivered() {
    let mut world = World::with_stream("", PoisonMix::None).await;
    world.receiver.slow_down(SLOW_AGGREGATE, DELAY, SLOW_EVENTS);
    let started = Instant::now();
    world.start_jetline(&world.yaml("", &[]));

    // The server's redelivery count of the webhook's consumer, sampled
    // until the run settles.
    let most_redelivered = Cell::new(0);
    let settled = wait_until(world.settle_timeout(), || async {
        if let Ok(stream) = world.js.get_stream(SOURCE_STREAM).await
            && let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&durable(HOOK)).await
            && let Ok(info) = consumer.info().await
        {
            most_redelivered.set(most_redelivered.get().max(info.num_redelivered));
        }
        world.settled(&SINKS).await
    })
    .await;
    let elapsed = started.elapsed();
    let most_redelivered = most_redelivered.get();
    world.stop_jetline();

    let applied = world.receiver.applied();
    let slow: Vec<_> = applied
        .iter()
        .filter(|request| request.aggregate_id == SLOW_AGGREGATE)
        .take(SLOW_EVENTS)
        .collect();
    let window = slow
        .first()
        .zip(slow.last())
        .map(|(first, last)| (first.at - DELAY, last.at));
    let (during, after) = window.map_or((0, 0), |(from, to)| {
        let others = applied
            .iter()
            .filter(|request| request.aggregate_id != SLOW_AGGREGATE);
        (
            others
                .clone()
                .filter(|r| r.at >= from && r.at <= to)
                .count(),
            others.filter(|r| r.at > to).count(),
        )
    });
    let slow_ids: Vec<String> = world
        .model
        .published
        .iter()
        .filter_map(|message| match &message.content {
            Content::Good(good) if good.aggregate_id == SLOW_AGGREGATE && good.n < SLOW_EVENTS => {
                Some(good.event_id.clone())
            }
            _ => None,
        })
        .collect();
    let requests: Vec<usize> = slow_ids
        .iter()
        .map(|id| world.receiver.requests_of(id))
        .collect();

    let mut report = Report::new("chaos_slow_aggregate", &world);
    report.check(settled, "the sinks did not settle every message".into());
    report.check(
        slow.len() == SLOW_EVENTS,
        format!("{} of the {SLOW_EVENTS} slow events applied", slow.len()),
    );
    report.check(
        during >= OTHERS_DURING || (during > 0 && after == 0),
        format!("{during} other events applied during the slow ones, {after} after"),
    );
    report.check(
        requests.iter().all(|&count| count == 1),
        format!("webhook requests per slow event: {requests:?}"),
    );
    report.check(
        most_redelivered == 0,
        format!("the webhook's consumer had up to {most_redelivered} redelivered messages"),
    );
    report.note(format!(
        "{SLOW_EVENTS} events of {SLOW_AGGREGATE} at {} s each: {during} other events applied meanwhile, {after} after; requests per slow event {requests:?}; most redelivered {most_redelivered}",
        DELAY.as_secs()
    ));
    report.note(format!(
        "time to recover: not applicable; all settled {:.1} s after the start",
        elapsed.as_secs_f64()
    ));
    report.account(&world, Vec::new()).await;
    report.finish();
}
