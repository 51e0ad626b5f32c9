//! The core path: JetStream in, validated envelopes, routes, one durable
//! consumer per sink, JetStream sink out, dead letters for invalid events.

use std::{collections::BTreeMap, time::Duration};

use jetline::dead_letter::header as dlq;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn one_sink_config(url: &str, stream: &str, prefix: &str, out_subject: &str) -> String {
    config_yaml(
        url,
        &format!(
            "
sources:
  orders: {{ stream: {stream}, subjects: ['{prefix}.>'] }}
sinks:
  out: {{ type: jetstream, subject: '{out_subject}', headers: full }}
routes:
  - {{ name: all, from: orders, to: [out] }}
dead_letter: {{ stream: DLQ_{stream}, subject_prefix: dlq_{prefix} }}
"
        ),
    )
}

#[tokio::test]
async fn binary_and_json_envelopes_reach_the_sink_with_subject_id_and_headers() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    create_stream(&js, "OUT", &["projections.>"]).await;

    let binary = created_v3("evt-bin", "order-1", 1250);
    let json = shipped_v1("evt-json", "order-1", "TRACK-9");
    publish_all(
        &js,
        vec![
            Outgoing::binary("orders.created", &binary).header("traceparent", "00-abc-def-01"),
            Outgoing::json("orders.shipped", &json),
        ],
    )
    .await;

    let jetline = Running::start(&one_sink_config(
        &server.url(),
        "ORDERS",
        "orders",
        "projections.orders.{aggregate_id}",
    ));
    eventually(TIMEOUT, "two events in OUT", || async {
        (stream_count(&js, "OUT").await == 2).then_some(())
    })
    .await;
    jetline.stop().await;

    let stored = stream_messages(&js, "OUT").await;
    assert_eq!(stored.len(), 2);
    for (message, document) in stored.iter().zip([&binary, &json]) {
        assert_eq!(message.subject.as_str(), "projections.orders.order-1");
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            header("Nats-Msg-Id"),
            document["eventId"].as_str().map(String::from)
        );
        assert_eq!(
            header("Content-Type").as_deref(),
            Some("application/protobuf")
        );
        assert_eq!(
            header("Jetline-Correlation-Id"),
            Some(format!(
                "corr-{}",
                document["eventId"].as_str().unwrap_or_default()
            ))
        );
        // Downstream always carries binary protobuf: decode it back.
        let delivered = DECODER
            .decode(Some("application/protobuf"), &message.payload)
            .expect("the sink wrote a valid envelope");
        assert_eq!(delivered, decode_json(document));
    }
    assert_eq!(
        stored[0].headers.get("traceparent").map(|v| v.as_str()),
        Some("00-abc-def-01")
    );
}

#[tokio::test]
async fn each_invalid_event_lands_once_in_the_dead_letter_stream_and_good_ones_pass() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "INV", &["inv.>"]).await;
    create_stream(&js, "INV_OUT", &["invout.>"]).await;

    let mut missing_id = created_v3("x", "order-2", 1);
    missing_id["eventId"] = "".into();
    let mut unknown_type = created_v3("evt-u", "order-2", 1);
    unknown_type["eventType"] = "orders.OrderTeleported".into();
    let mut unknown_version = created_v3("evt-v", "order-2", 1);
    unknown_version["schemaVersion"] = 42.into();
    let mut bad_payload = created_v3("evt-p", "order-2", 1);
    bad_payload["payload"]["totalAmountCents"] = "many".into();
    let mut unknown_field = created_v3("evt-f", "order-2", 1);
    unknown_field["payload"]["colour"] = "red".into();

    let invalid = vec![
        (
            Outgoing::raw("inv.a", None, b"\x0a\xff\xff not protobuf"),
            "invalid_envelope",
        ),
        (
            Outgoing::raw("inv.b", Some("application/json"), b"{not json"),
            "invalid_envelope",
        ),
        (Outgoing::json("inv.c", &missing_id), "invalid_envelope"),
        (Outgoing::json("inv.d", &unknown_type), "unknown_type"),
        (Outgoing::json("inv.e", &unknown_version), "unknown_type"),
        (Outgoing::json("inv.f", &bad_payload), "invalid_payload"),
        (Outgoing::json("inv.g", &unknown_field), "invalid_payload"),
    ];
    let expected: Vec<(String, Vec<u8>, &str)> = invalid
        .iter()
        .map(|(message, reason)| (message.subject.clone(), message.body.clone(), *reason))
        .collect();
    let mut batch = vec![Outgoing::json(
        "inv.first",
        &created_v3("good-1", "order-1", 1),
    )];
    batch.extend(invalid.into_iter().map(|(message, _)| message));
    batch.push(Outgoing::binary(
        "inv.last",
        &created_v3("good-2", "order-3", 2),
    ));
    let published = batch.len() as u64;
    publish_all(&js, batch).await;

    let jetline = Running::start(&one_sink_config(
        &server.url(),
        "INV",
        "inv",
        "invout.{aggregate_id}",
    ));
    eventually(
        TIMEOUT,
        "good events applied and invalid ones dead-lettered",
        || async {
            let applied = stream_count(&js, "INV_OUT").await;
            let dead = stream_count(&js, "DLQ_INV").await;
            (applied + dead == published).then_some(())
        },
    )
    .await;
    // Give a wrongly repeated dead letter the time to show up before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    jetline.stop().await;

    assert_eq!(stream_count(&js, "INV_OUT").await, 2);
    let letters = stream_messages(&js, "DLQ_INV").await;
    assert_eq!(letters.len(), expected.len(), "one entry per invalid event");
    for (subject, body, reason) in expected {
        let letter = letters
            .iter()
            .find(|l| {
                l.headers.get(dlq::SOURCE_SUBJECT).map(|v| v.as_str()) == Some(subject.as_str())
            })
            .unwrap_or_else(|| panic!("dead letter for {subject}"));
        let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(dlq::REASON).as_deref(), Some(reason), "{subject}");
        assert_eq!(
            letter.payload.as_ref(),
            body.as_slice(),
            "original bytes of {subject}"
        );
        assert_eq!(header(dlq::SINK).as_deref(), Some("out"));
        assert_eq!(header(dlq::SOURCE_STREAM).as_deref(), Some("INV"));
        assert!(header(dlq::SOURCE_SEQ).is_some_and(|seq| seq.parse::<u64>().is_ok()));
        assert!(header(dlq::ERROR).is_some_and(|error| !error.is_empty()));
        assert!(header(dlq::TIME).is_some());
        assert_eq!(letter.subject.as_str(), format!("dlq_inv.out.{reason}"));
    }
}

#[tokio::test]
async fn a_killed_jetline_restarts_without_losing_or_duplicating() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "RST", &["rst.>"]).await;
    create_stream(&js, "RST_OUT", &["rstout.>"]).await;
    let total = 3_000u64;
    let batch = (0..total)
        .map(|n| {
            let document = created_v3(&format!("rst-{n}"), &format!("order-{}", n % 50), n as i64);
            Outgoing::binary("rst.created", &document)
        })
        .collect();
    publish_all(&js, batch).await;

    // A short ack_wait: the events the killed process held come back soon.
    let yaml = one_sink_config(&server.url(), "RST", "rst", "rstout.{aggregate_id}")
        + "consumers: { ack_wait: 3s, max_ack_pending: 500 }\n";
    let first = Process::start(&yaml);
    eventually(TIMEOUT, "some events applied", || async {
        (stream_count(&js, "RST_OUT").await > 0).then_some(())
    })
    .await;
    first.kill();
    let applied_before_restart = stream_count(&js, "RST_OUT").await;

    let second = Process::start(&yaml);
    eventually(Duration::from_secs(90), "every event applied", || async {
        (stream_count(&js, "RST_OUT").await >= total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(second);

    let stored = stream_messages(&js, "RST_OUT").await;
    let ids: std::collections::BTreeSet<String> = stored
        .iter()
        .filter_map(|m| m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()))
        .collect();
    assert_eq!(
        stored.len() as u64,
        total,
        "no duplicates downstream (killed after {applied_before_restart})"
    );
    assert_eq!(ids.len() as u64, total, "every event once");

    // Per aggregate, the stream order is kept.
    let mut last_seen: BTreeMap<String, i64> = BTreeMap::new();
    for message in &stored {
        let envelope = DECODER
            .decode(None, &message.payload)
            .expect("valid output");
        let n: i64 = envelope
            .event_id
            .trim_start_matches("rst-")
            .parse()
            .expect("numbered id");
        let previous = last_seen.insert(envelope.aggregate_id.clone(), n);
        assert!(
            previous.is_none_or(|p| p < n),
            "order of {}",
            envelope.aggregate_id
        );
    }
}

#[tokio::test]
async fn two_sinks_on_one_source_progress_independently() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "TWO", &["two.>"]).await;
    create_stream(&js, "TWO_B", &["twob.>"]).await;
    // Sink A's downstream stream does not exist yet: its publishes fail.
    let yaml = config_yaml(
        &server.url(),
        "
sources:
  orders: { stream: TWO, subjects: ['two.>'] }
sinks:
  a: { type: jetstream, subject: 'twoa.{aggregate_id}', retry: { backoff: [100ms] , max_attempts: 1000 } }
  b: { type: jetstream, subject: 'twob.{aggregate_id}' }
routes:
  - { name: all, from: orders, to: [a, b] }
dead_letter: { stream: DLQ_TWO, subject_prefix: dlq_two }
",
    );
    let total = 200u64;
    publish_all(
        &js,
        (0..total)
            .map(|n| {
                Outgoing::binary(
                    "two.x",
                    &created_v3(&format!("two-{n}"), &format!("o{}", n % 7), n as i64),
                )
            })
            .collect(),
    )
    .await;
    let jetline = Running::start(&yaml);
    eventually(TIMEOUT, "sink b applied everything", || async {
        (stream_count(&js, "TWO_B").await == total).then_some(())
    })
    .await;
    assert_eq!(stream_count(&js, "TWO_A").await, 0);

    create_stream(&js, "TWO_A", &["twoa.>"]).await;
    eventually(TIMEOUT, "sink a caught up", || async {
        (stream_count(&js, "TWO_A").await == total).then_some(())
    })
    .await;
    jetline.stop().await;
    assert_eq!(
        stream_count(&js, "DLQ_TWO").await,
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_events_and_exits_0_and_the_consumer_follows_config_changes() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "TERM", &["term.>"]).await;
    create_stream(&js, "TERM_OUT", &["termout.>"]).await;
    let total = 500u64;
    publish_all(
        &js,
        (0..total)
            .map(|n| {
                Outgoing::binary(
                    "term.x",
                    &created_v3(&format!("term-{n}"), &format!("o{}", n % 10), n as i64),
                )
            })
            .collect(),
    )
    .await;
    let yaml = |ack_wait: &str| {
        one_sink_config(&server.url(), "TERM", "term", "termout.{aggregate_id}")
            + &format!("consumers: {{ ack_wait: {ack_wait} }}\n")
    };

    let first = Process::start(&yaml("20s"));
    eventually(TIMEOUT, "some events applied", || async {
        (stream_count(&js, "TERM_OUT").await > 0).then_some(())
    })
    .await;
    assert_eq!(first.terminate(), Some(0), "a graceful stop exits 0");
    let consumer_info = || async {
        let stream = js.get_stream("TERM").await.expect("stream");
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer("jetline-orders-out")
            .await
            .expect("durable consumer");
        consumer.info().await.expect("info").clone()
    };
    let after_stop = consumer_info().await;
    assert_eq!(after_stop.config.ack_wait, Duration::from_secs(20));

    // A changed setting updates the durable consumer; its progress is kept.
    // The second process may first wait out a recovery window (its
    // `ack_wait` and 2 s) before applying, hence the longer wait.
    let second = Process::start(&yaml("12s"));
    eventually(TIMEOUT * 2, "every event applied once", || async {
        (stream_count(&js, "TERM_OUT").await == total).then_some(())
    })
    .await;
    assert_eq!(second.terminate(), Some(0));
    assert_eq!(
        consumer_info().await.config.ack_wait,
        Duration::from_secs(12)
    );
    assert_eq!(
        stream_count(&js, "TERM_OUT").await,
        total,
        "nothing applied twice"
    );
}
