//! Scenario 3: the read models' servers fail mid-stream: PostgreSQL is
//! restarted (stopped at once, as a crash would) while the webhook answers
//! 503 for 10 s, then 429 with `Retry-After: 2` for 5 s. Every event is
//! applied once when they are back, and no retry of a 429 comes sooner
//! than its `Retry-After`.

use std::time::{Duration, Instant};

use super::{
    accounting::{Report, seconds},
    model::PoisonMix,
    receiver::Answering,
    world::{HOOK, World},
};

const UNAVAILABLE: Duration = Duration::from_secs(10);
const THROTTLED: Duration = Duration::from_secs(5);
const RETRY_AFTER_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_postgres_restart_and_webhook_refusals_are_ridden_out() {
    let mut world = World::with_stream("", PoisonMix::None).await;
    let started = Instant::now();
    world.start_jetline(&world.yaml("", &[]));
    // Timed by the webhook, the fastest of the two: waiting for the slowest
    // sink could let the webhook finish before its refusals begin.
    let progressed = world.until_progress_of(&[HOOK], 0.3).await;

    let outage = Instant::now();
    world.receiver.answer(Answering::Unavailable);
    world.postgres.restart();
    tokio::time::sleep(UNAVAILABLE.saturating_sub(outage.elapsed())).await;
    world.receiver.answer(Answering::Throttled {
        retry_after_secs: RETRY_AFTER_SECS,
    });
    tokio::time::sleep(THROTTLED).await;
    world.receiver.answer(Answering::Normally);
    let cleared = Instant::now();
    let recovery = world.recover(started, cleared).await;
    world.stop_jetline();

    let mut report = Report::new("chaos_downstream_outage", &world);
    report.check(
        progressed,
        "the webhook never reached 30% before the outage".into(),
    );
    report.check(
        world.receiver.refused() > 0,
        "the webhook refused no request".into(),
    );
    let shortest = world.receiver.shortest_wait_after_429();
    report.check(
        shortest.is_some_and(|wait| wait >= Duration::from_secs(RETRY_AFTER_SECS)),
        format!(
            "a retry came {} after a 429 with Retry-After: {RETRY_AFTER_SECS}",
            seconds(shortest)
        ),
    );
    report.note(format!(
        "PostgreSQL restarted; webhook 503 for {} s, then 429 (Retry-After: {RETRY_AFTER_SECS}) for {} s; shortest wait after a 429: {}",
        UNAVAILABLE.as_secs(),
        THROTTLED.as_secs(),
        seconds(shortest)
    ));
    report.recovery("the webhook answering again", &recovery);
    report.account(&world, Vec::new()).await;
    report.finish();
}
