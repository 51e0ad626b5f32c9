//! Delivery guarantees: retries with backoff through JetStream redelivery,
//! per-aggregate order through retries, dead letters with their reasons,
//! `park_key`, attempt counts that survive a kill -9, and the soak test.

use std::{collections::HashMap, time::Duration};

use jetline::{dead_letter::header as dlq, sink::custom::CustomSinks};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn numbered(prefix: &str, aggregate: &str, n: usize) -> String {
    format!("{prefix}-{aggregate}-{n}")
}

/// Events `0..per_aggregate` for each aggregate, interleaved in stream order.
fn interleaved(prefix: &str, aggregates: &[String], per_aggregate: usize) -> Vec<(String, String)> {
    (0..per_aggregate)
        .flat_map(|n| {
            aggregates
                .iter()
                .map(move |a| (a.clone(), numbered(prefix, a, n)))
        })
        .collect()
}

async fn publish_events(
    js: &async_nats::jetstream::Context,
    subject: &str,
    events: &[(String, String)],
) {
    let batch = events
        .iter()
        .enumerate()
        .map(|(n, (aggregate, id))| Outgoing::binary(subject, &created_v3(id, aggregate, n as i64)))
        .collect();
    publish_all(js, batch).await;
}

/// Per aggregate, the applied event ids in the order they were applied.
fn by_aggregate(applied: &[AppliedEvent]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for event in applied {
        out.entry(event.aggregate_id.clone())
            .or_default()
            .push(event.event_id.clone());
    }
    out
}

fn number_of(id: &str) -> usize {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("numbered event id")
}

#[tokio::test]
async fn a_transient_failure_is_retried_in_order_while_other_aggregates_flow() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "RETRY", &["retry.>"]).await;
    let aggregates: Vec<String> = (0..20).map(|n| format!("agg{n}")).collect();
    let events = interleaved("r", &aggregates, 5);
    let slow = numbered("r", "agg0", 1);
    let sink = FlakySink::with_plan([(slow.clone(), Plan::FailTimes(3))]);
    publish_events(&js, "retry.x", &events).await;

    let yaml = custom_config(
        &server.url(),
        "RETRY",
        "retry",
        "  flaky: { type: custom, ack_wait: 5s, retry: { max_attempts: 10, backoff: [1s], jitter: 0.0 } }",
        "",
    );
    let jetline = Running::start_with(&yaml, CustomSinks::new().register("flaky", sink.clone()));
    eventually(TIMEOUT, "every event applied", || async {
        (sink.applied_count() == events.len()).then_some(())
    })
    .await;
    jetline.stop().await;

    let applied = sink.applied();
    assert_eq!(applied.len(), events.len(), "each event applied once");
    assert_eq!(sink.attempts(&slow), 4, "three failures, then applied");
    let slow_event = applied
        .iter()
        .find(|e| e.event_id == slow)
        .expect("applied");
    assert_eq!(
        slow_event.attempt, 4,
        "the attempt is the server's delivery count"
    );
    for (aggregate, ids) in by_aggregate(&applied) {
        let numbers: Vec<usize> = ids.iter().map(|id| number_of(id)).collect();
        assert_eq!(numbers, (0..5).collect::<Vec<_>>(), "order of {aggregate}");
    }
    // While agg0 waited for its retries, the other aggregates were not held.
    let slow_position = applied
        .iter()
        .position(|e| e.event_id == slow)
        .expect("applied");
    let others_after = applied[slow_position..]
        .iter()
        .filter(|e| e.aggregate_id != "agg0")
        .count();
    assert_eq!(
        others_after, 0,
        "other aggregates finished during the retries"
    );
}

#[tokio::test]
async fn permanent_errors_dead_letter_once_and_park_key_parks_the_aggregate() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "PERM", &["perm.>"]).await;
    let aggregates: Vec<String> = vec!["a".into(), "b".into()];
    let events = interleaved("p", &aggregates, 4);
    let rejected = numbered("p", "a", 1);
    let exhausted = numbered("p", "b", 2);
    let plan = [
        (rejected.clone(), Plan::Reject),
        (exhausted.clone(), Plan::FailAlways),
    ];
    let keep_going = FlakySink::with_plan(plan.clone());
    let parking = FlakySink::with_plan(plan);
    publish_events(&js, "perm.x", &events).await;

    let yaml = custom_config(
        &server.url(),
        "PERM",
        "perm",
        "  keep: { type: custom, retry: { max_attempts: 3, backoff: [100ms] } }
  park: { type: custom, on_dead_letter: park_key, retry: { max_attempts: 3, backoff: [100ms] } }",
        "",
    );
    let sinks = CustomSinks::new()
        .register("keep", keep_going.clone())
        .register("park", parking.clone());
    let jetline = Running::start_with(&yaml, sinks);
    let published = events.len() as u64;
    eventually(TIMEOUT, "both sinks settled every event", || async {
        let letters = stream_count(&js, "DLQ_PERM").await;
        let settled = keep_going.applied_count() + parking.applied_count();
        (settled as u64 + letters == 2 * published).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    jetline.stop().await;

    let letters = stream_messages(&js, "DLQ_PERM").await;
    let entry = |sink: &str, id: &str| -> Vec<(String, String)> {
        letters
            .iter()
            .filter(|l| l.headers.get(dlq::SINK).map(|v| v.as_str()) == Some(sink))
            .filter(|l| {
                DECODER
                    .decode(None, &l.payload)
                    .is_ok_and(|e| e.event_id == id)
            })
            .map(|l| {
                let header = |name: &str| {
                    l.headers
                        .get(name)
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default()
                };
                (header(dlq::REASON), header(dlq::ATTEMPTS))
            })
            .collect()
    };
    // continue: only the failed events are dead-lettered, once each.
    assert_eq!(
        entry("keep", &rejected),
        [("sink_rejected".to_owned(), "1".to_owned())]
    );
    assert_eq!(
        entry("keep", &exhausted),
        [("max_attempts".to_owned(), "3".to_owned())]
    );
    assert_eq!(keep_going.applied_count(), events.len() - 2);
    // park_key: the later events of those aggregates follow them.
    assert_eq!(
        entry("park", &rejected),
        [("sink_rejected".to_owned(), "1".to_owned())]
    );
    for n in 2..4 {
        assert_eq!(
            entry("park", &numbered("p", "a", n))[0].0,
            "parked_after_failure"
        );
    }
    assert_eq!(
        entry("park", &numbered("p", "b", 3))[0].0,
        "parked_after_failure"
    );
    let parked_applied: Vec<String> = parking.applied().into_iter().map(|e| e.event_id).collect();
    assert_eq!(
        parked_applied
            .iter()
            .filter(|id| id.starts_with("p-a-"))
            .count(),
        1,
        "only a's first event applied: {parked_applied:?}"
    );
    assert_eq!(
        letters.len(),
        2 + 2 + 3,
        "keep: 2 entries, park: 2 failed + 3 parked"
    );
}

/// `jetline <args>` against the config in `file`; its standard output.
fn cli(file: &std::path::Path, args: &[&str]) -> String {
    let (command, rest) = args.split_first().expect("a command");
    let output = std::process::Command::new(jetline_bin())
        .arg(command)
        .arg("--config")
        .arg(file)
        .args(rest)
        .output()
        .expect("jetline runs");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn parked_aggregates_survive_a_restart_and_a_redrive_unparks_them() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "PDUR", &["pdur.>"]).await;
    let yaml = custom_config(
        &server.url(),
        "PDUR",
        "pdur",
        "  park: { type: custom, on_dead_letter: park_key, retry: { max_attempts: 2, backoff: [50ms] } }",
        "",
    );
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("written");
    let consumer = "jetline-s-park";
    let settled = || async {
        eventually(TIMEOUT, "every event settled", || async {
            consumer_settled(&js, "PDUR", consumer).await.then_some(())
        })
        .await
    };
    let ids = |sink: &FlakySink| -> Vec<String> {
        sink.applied().into_iter().map(|e| e.event_id).collect()
    };

    // First run: a-1 is rejected, so a is parked and a-2 follows it.
    publish_events(
        &js,
        "pdur.x",
        &[
            ("a".into(), "q-a-0".into()),
            ("a".into(), "q-a-1".into()),
            ("a".into(), "q-a-2".into()),
            ("b".into(), "q-b-0".into()),
        ],
    )
    .await;
    let first = FlakySink::with_plan([("q-a-1".to_owned(), Plan::Reject)]);
    let running = Running::start_with(&yaml, CustomSinks::new().register("park", first.clone()));
    settled().await;
    running.stop().await;
    assert_eq!(ids(&first), ["q-a-0", "q-b-0"]);
    assert!(cli(file.path(), &["status"]).contains(&format!("parked by {consumer}: \"a\"")));
    assert!(cli(file.path(), &["dlq", "list"]).contains(&format!("parked by {consumer}: \"a\"")));

    // Restarted: a is still parked, b flows.
    let second = FlakySink::default();
    let running = Running::start_with(&yaml, CustomSinks::new().register("park", second.clone()));
    publish_events(
        &js,
        "pdur.x",
        &[("a".into(), "q-a-3".into()), ("b".into(), "q-b-1".into())],
    )
    .await;
    settled().await;
    assert_eq!(ids(&second), ["q-b-1"], "a stays parked across the restart");
    let reasons: Vec<String> = stream_messages(&js, "DLQ_PDUR")
        .await
        .iter()
        .map(|entry| {
            entry
                .headers
                .get(dlq::REASON)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "sink_rejected",
            "parked_after_failure",
            "parked_after_failure"
        ]
    );

    // Redriving a's entries takes it back: they apply in order, then a is
    // no longer parked.
    cli(file.path(), &["dlq", "redrive", "--sink", "park"]);
    eventually(TIMEOUT, "the redriven events applied", || async {
        (ids(&second).len() == 4).then_some(())
    })
    .await;
    assert_eq!(ids(&second), ["q-b-1", "q-a-1", "q-a-2", "q-a-3"]);
    settled().await;
    running.stop().await;
    assert!(!cli(file.path(), &["status"]).contains("parked by"));
    assert_eq!(stream_count(&js, "DLQ_PDUR").await, 0);
}

#[tokio::test]
async fn the_attempt_count_survives_a_kill_and_nothing_is_lost() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "KILL", &["kill.>"]).await;
    // The sink's stream does not exist: every publish fails transiently.
    let yaml = config_yaml(
        &server.url(),
        "
sources:
  s: { stream: KILL, subjects: ['kill.>'] }
sinks:
  out: { type: jetstream, subject: 'killout.{aggregate_id}', ack_wait: 2s, retry: { max_attempts: 4, backoff: [400ms], jitter: 0.0 } }
routes:
  - { name: all, from: s, to: [out] }
dead_letter: { stream: DLQ_KILL, subject_prefix: dlq_kill }
",
    );
    let aggregates: Vec<String> = (0..4).map(|n| format!("k{n}")).collect();
    let events = interleaved("k", &aggregates, 3);
    publish_events(&js, "kill.x", &events).await;

    let first = Process::start(&yaml);
    let consumer_name = "jetline-s-out";
    eventually(TIMEOUT, "retries under way", || async {
        let stream = js.get_stream("KILL").await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(consumer_name).await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_redelivered > 0).then_some(())
    })
    .await;
    first.kill();

    let second = Process::start(&yaml);
    eventually(
        TIMEOUT,
        "every event dead-lettered after its attempts",
        || async { (stream_count(&js, "DLQ_KILL").await == events.len() as u64).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(second);

    let letters = stream_messages(&js, "DLQ_KILL").await;
    assert_eq!(
        letters.len(),
        events.len(),
        "published = dead-lettered, once each"
    );
    let mut per_aggregate: HashMap<String, Vec<usize>> = HashMap::new();
    for letter in &letters {
        let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(dlq::REASON).as_deref(), Some("max_attempts"));
        // Decided at the server's fourth delivery, across the kill.
        assert_eq!(header(dlq::ATTEMPTS).as_deref(), Some("4"));
        let envelope = DECODER
            .decode(None, &letter.payload)
            .expect("original bytes");
        per_aggregate
            .entry(envelope.aggregate_id.clone())
            .or_default()
            .push(number_of(&envelope.event_id));
    }
    for (aggregate, numbers) in per_aggregate {
        assert_eq!(numbers, vec![0, 1, 2], "order of {aggregate}");
    }
}

/// 100,000 events over 1,000 aggregates with 1% transient and 0.1% permanent
/// failures (size from `JETLINE_SOAK_EVENTS`): published = applied +
/// dead-lettered, exactly, and per-aggregate order holds. Run by `scripts/soak`.
#[tokio::test]
#[ignore = "long: run by scripts/soak"]
async fn soak_every_event_is_applied_or_dead_lettered_in_order() {
    let total: usize = std::env::var("JETLINE_SOAK_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let aggregate_count = (total / 100).clamp(1, 1_000);
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "SOAK", &["soak.>"]).await;
    let aggregates: Vec<String> = (0..aggregate_count).map(|n| format!("s{n}")).collect();
    let events = interleaved("soak", &aggregates, total.div_ceil(aggregate_count));
    let events = &events[..total];

    // A fixed, seeded plan: every 100th event fails transiently once or
    // twice, every 1,000th (offset) is rejected.
    let mut plan = Vec::new();
    let mut rejected = 0usize;
    for (index, (_, id)) in events.iter().enumerate() {
        if index % 1000 == 500 {
            plan.push((id.clone(), Plan::Reject));
            rejected += 1;
        } else if index % 100 == 7 {
            plan.push((id.clone(), Plan::FailTimes(1 + (index / 100 % 2) as u32)));
        }
    }
    let sink = FlakySink::with_plan(plan);
    publish_events(&js, "soak.x", events).await;

    let yaml = custom_config(
        &server.url(),
        "SOAK",
        "soak",
        "  soak_sink: { type: custom, retry: { max_attempts: 5, backoff: [20ms, 100ms] } }",
        "consumers: { max_ack_pending: 2000, concurrency: 64 }",
    );
    let jetline = Running::start_with(
        &yaml,
        CustomSinks::new().register("soak_sink", sink.clone()),
    );
    eventually(Duration::from_secs(600), "the soak run settled", || async {
        let letters = stream_count(&js, "DLQ_SOAK").await as usize;
        (sink.applied_count() + letters >= total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    jetline.stop().await;

    let applied = sink.applied();
    let letters = stream_count(&js, "DLQ_SOAK").await as usize;
    assert_eq!(letters, rejected, "dead-lettered = rejected");
    assert_eq!(
        applied.len() + letters,
        total,
        "published = applied + dead-lettered"
    );
    for (aggregate, ids) in by_aggregate(&applied) {
        let numbers: Vec<usize> = ids.iter().map(|id| number_of(id)).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "order of {aggregate}"
        );
    }
}

/// A backlog larger than one admit batch (256 deliveries taken in one go):
/// each message taken from the pull is admitted, none is left to come back
/// after `ack_wait` behind its aggregate's later events.
#[tokio::test]
async fn a_backlog_larger_than_one_admit_batch_is_applied_in_order_at_once() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "BACKLOG", &["backlog.>"]).await;
    create_stream(&js, "BACKLOG_OUT", &["backlogout.>"]).await;
    let aggregates: Vec<String> = (0..10).map(|a| format!("b{a}")).collect();
    let events = interleaved("e", &aggregates, 300);
    publish_events(&js, "backlog.created", &events).await;
    let yaml = config_yaml(
        &server.url(),
        "
sources:
  s: { stream: BACKLOG, subjects: ['backlog.>'] }
sinks:
  copy: { type: jetstream, subject: 'backlogout.{aggregate_id}' }
routes:
  - { name: all, from: s, to: [copy] }
dead_letter: { stream: DLQ_BACKLOG, subject_prefix: dlq_backlog }
",
    );
    let running = Running::start(&yaml);
    // Well inside the default 30 s `ack_wait`: a dropped delivery would
    // only be back after it.
    eventually(Duration::from_secs(20), "the backlog copied", || async {
        (stream_count(&js, "BACKLOG_OUT").await >= events.len() as u64).then_some(())
    })
    .await;
    running.stop().await;
    let mut numbers: HashMap<String, Vec<usize>> = HashMap::new();
    for message in stream_messages(&js, "BACKLOG_OUT").await {
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.as_str().to_owned())
            .expect("an event id");
        let aggregate = message.subject.trim_start_matches("backlogout.").to_owned();
        numbers.entry(aggregate).or_default().push(number_of(&id));
    }
    let expected: Vec<usize> = (0..300).collect();
    for aggregate in &aggregates {
        assert_eq!(
            numbers.get(aggregate),
            Some(&expected),
            "order of {aggregate}"
        );
    }
}
