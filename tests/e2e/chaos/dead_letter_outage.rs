//! Scenario 6: the dead-letter stream unavailable mid-stream, with 1%
//! poison arriving meanwhile. First deleted: Jetline creates it again by
//! itself and stores each entry once. Then at its `max_bytes` with `discard:
//! new` for 10 s, until the limit is lifted: no poison may be terminated
//! before its dead letter is stored (each sink's ack floor stays below the
//! phase's first poison), and Jetline says why in its logs and in `/readyz`.
//! In the end every entry is stored, once.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{self, DiscardPolicy};
use serde_json::Value;

use super::{
    accounting::Report,
    model::{Content, PoisonMix},
    world::{DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, SINKS, World, wait_until},
};

const OUTAGE: Duration = Duration::from_secs(10);

/// What one phase of the outage showed.
struct Phase {
    /// Whether every sink came to the phase's first poison.
    reached_poison: bool,
    /// `/readyz` polls, and those answering 503 with a reason naming the
    /// dead letters.
    polls: usize,
    unready_for_dead_letters: usize,
    /// Log lines (warn or error) about dead letters that could not be
    /// stored, and the first one's error.
    log_lines: usize,
    first_error: Option<String>,
    /// Sinks whose ack floor passed the phase's first poison message.
    terminated_early: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_dead_letter_stream_unavailable_terminates_nothing() {
    let mut world = World::start("").await;
    let part = world.size.events * 3 / 10;
    world
        .publish(world.size.events - 2 * part, PoisonMix::None)
        .await;
    let started = Instant::now();
    world.start_jetline(&world.yaml("", &[]));
    let ready = world.until_ready(Duration::from_secs(60)).await;

    // Deleted before any entry was stored (no poison yet), so none is lost.
    world
        .js
        .delete_stream(DEAD_LETTER_STREAM)
        .await
        .expect("dead-letter stream deleted");
    let deleted = phase(&mut world, part).await;
    let recreated = world.js.get_stream(DEAD_LETTER_STREAM).await.is_ok();
    if !recreated {
        // Created here so that the rest of the run can be accounted.
        world
            .js
            .get_or_create_stream(stream::Config {
                name: DEAD_LETTER_STREAM.to_owned(),
                subjects: vec![format!("{DEAD_LETTER_PREFIX}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("dead-letter stream created again");
    }

    let mut handle = world
        .js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .expect("dead-letter stream");
    let info = handle.info().await.expect("stream info").clone();
    let mut config = info.config.clone();
    config.max_bytes = info.state.bytes.max(1) as i64;
    config.discard = DiscardPolicy::New;
    world
        .js
        .update_stream(config.clone())
        .await
        .expect("dead-letter stream limited");
    let full = phase(&mut world, part).await;
    config.max_bytes = -1;
    world
        .js
        .update_stream(config)
        .await
        .expect("dead-letter stream limit lifted");

    let settled = world.until_settled(&SINKS).await;
    let elapsed = started.elapsed();
    world.stop_jetline();

    let mut report = Report::new("chaos_dead_letter_outage", &world);
    report.check(ready, "/readyz not 200 before the outage".into());
    for (name, phase) in [("deleted", &deleted), ("full", &full)] {
        report.check(
            phase.reached_poison,
            format!("stream {name}: the sinks never came to the phase's first poison"),
        );
    }
    report.check(
        recreated,
        "Jetline did not create the deleted dead-letter stream again".into(),
    );
    report.note(format!(
        "stream deleted: created again by Jetline: {recreated}; {} log lines about unstored dead letters; /readyz 503 naming them in {} of {} polls",
        deleted.log_lines, deleted.unready_for_dead_letters, deleted.polls
    ));
    report.check(
        full.terminated_early.is_empty(),
        format!(
            "stream full: {:?} settled poison whose dead letter could not be stored",
            full.terminated_early
        ),
    );
    report.check(
        full.log_lines > 0,
        "stream full: no log line says a dead letter could not be stored".into(),
    );
    report.check(
        full.unready_for_dead_letters > 0,
        format!(
            "stream full: /readyz named the dead letters in none of {} polls",
            full.polls
        ),
    );
    report.note(format!(
        "stream full for {} s: {} log lines about unstored dead letters (first error: {}); /readyz 503 naming them in {} of {} polls",
        OUTAGE.as_secs(),
        full.log_lines,
        full.first_error.as_deref().unwrap_or("none"),
        full.unready_for_dead_letters,
        full.polls
    ));
    report.check(settled, "the sinks did not settle every message".into());
    report.note(format!(
        "time to recover: not measured; all settled {:.1} s after the start",
        elapsed.as_secs_f64()
    ));
    report.account(&world, Vec::new()).await;
    report.finish();
}

/// Publishes `count` messages with 1% garbage while the dead-letter stream
/// is unavailable, waits until every sink has come to the first poison
/// (settled everything before it), and from then watches `/readyz`, the
/// logs and the ack floors for [`OUTAGE`].
async fn phase(world: &mut World, count: usize) -> Phase {
    let log_start = world.jetline_log().len();
    let first = world.model.published.len();
    world.publish(count, PoisonMix::GarbageOnly).await;
    let first_poison = world.model.published[first..]
        .iter()
        .find(|message| matches!(message.content, Content::Poison { .. }))
        .map_or(0, |message| message.seq);
    let reached_poison = wait_until(world.settle_timeout(), || async {
        world
            .slowest_floor(&SINKS)
            .await
            .is_some_and(|floor| floor + 1 >= first_poison)
    })
    .await;
    let since = Instant::now();
    let (mut polls, mut unready) = (0, 0);
    while since.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        polls += 1;
        if let Some((503, body)) = world.readyz().await
            && body.to_lowercase().contains("dead")
        {
            unready += 1;
        }
    }
    let floors = world.ack_floors(&SINKS).await.unwrap_or_default();
    let terminated_early = SINKS
        .iter()
        .zip(floors)
        .filter(|(_, floor)| *floor >= first_poison)
        .map(|(sink, _)| sink.to_string())
        .collect();
    let log = world.jetline_log();
    let lines: Vec<Value> = log
        .get(log_start..)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            let level = line["level"].as_str().unwrap_or_default();
            let message = line["fields"]["message"].as_str().unwrap_or_default();
            (level == "ERROR" || level == "WARN")
                && message.to_lowercase().contains("dead letter")
                && message.contains("not")
        })
        .collect();
    Phase {
        reached_poison,
        polls,
        unready_for_dead_letters: unready,
        log_lines: lines.len(),
        first_error: lines
            .first()
            .and_then(|line| line["fields"]["error"].as_str().map(str::to_owned)),
        terminated_early,
    }
}
