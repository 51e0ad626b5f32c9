//! The HTTP sink against a local webhook server: the request (JSON envelope,
//! idempotency key, correlation and secret headers), retries of 503 no
//! sooner than its `Retry-After`, and 400 straight to the dead-letter stream.

use std::time::Duration;

use jetline::dead_letter::header as dlq;

use crate::support::*;

fn webhook_config(url: &str, stream: &str, hook: &str, settings: &str) -> String {
    let block = format!("    type: http\n    url: '{hook}'\n    timeout: 5s\n    {settings}");
    single_sink_yaml(url, stream, "notify", &block)
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_with_the_same_idempotency_key() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "HOOK", &["HOOK.>"]).await;
    // Two refusals with `Retry-After: 1` for every event, then success.
    let hook = Webhook::start(|request| match request.attempt {
        1 | 2 => Answer::status(503).header("retry-after", "1"),
        _ => Answer::status(204),
    })
    .await;
    let events: Vec<_> = (0..5)
        .map(|n| created_v3(&format!("hook-{n}"), &format!("order-{n}"), n * 100))
        .collect();
    publish_all(
        &js,
        events
            .iter()
            .map(|event| {
                Outgoing::binary("HOOK.created", event).header("traceparent", "00-abc-def-01")
            })
            .collect(),
    )
    .await;

    // The backoff alone would retry after 50ms: the server's 1s must win.
    let yaml = webhook_config(
        &server.url(),
        "HOOK",
        &hook.url,
        "headers: { X-Source: jetline-tests }\n    headers_env: { Authorization: HOOK_TOKEN }\n    retry: { backoff: [50ms], max_attempts: 10, jitter: 0.0 }",
    );
    let jetline = Process::start_with_env(&yaml, &[("HOOK_TOKEN", "Bearer s3cret")]);
    until_settled(&js, "HOOK", "notify").await;
    drop(jetline);

    let by_key = hook.by_key();
    assert_eq!(by_key.len(), events.len(), "one idempotency key per event");
    for event in &events {
        let id = event["eventId"].as_str().expect("an id");
        let attempts = &by_key[id];
        let statuses: Vec<u16> = attempts.iter().map(|request| request.status).collect();
        assert_eq!(statuses, [503, 503, 204], "{id}");
        for pair in attempts.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_secs(1),
                "{id}: retried after {gap:?}, before Retry-After"
            );
        }
        let request = &attempts[0];
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(request.header("x-source"), Some("jetline-tests"));
        assert_eq!(request.header("traceparent"), Some("00-abc-def-01"));
        assert_eq!(
            request.header("jetline-correlation-id"),
            Some(format!("corr-{id}").as_str())
        );
        assert_eq!(
            request.header("jetline-event-type"),
            Some("orders.OrderCreated")
        );
        assert_eq!(request.header("jetline-source-stream"), Some("HOOK"));
        // The body is the envelope in JSON with the payload as an object.
        let expected = decode_json(event).to_json().expect("json form");
        assert_eq!(request.body, expected, "{id}");
        assert_eq!(request.body["payload"]["customerId"], "c-1");
    }
    assert_eq!(stream_count(&js, "DLQ_HOOK").await, 0);
}

#[tokio::test]
async fn a_400_dead_letters_its_event_at_once_and_others_pass() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "HOOKBAD", &["HOOKBAD.>"]).await;
    let refused = |id: &str| id.ends_with("-3") || id.ends_with("-7");
    let hook = Webhook::start(move |request| {
        if refused(request.idempotency_key()) {
            Answer::status(400)
        } else {
            Answer::status(200)
        }
    })
    .await;
    let total = 10;
    publish_all(
        &js,
        (0..total)
            .map(|n| {
                Outgoing::json(
                    "HOOKBAD.x",
                    &shipped_v1(&format!("bad-{n}"), &format!("order-{n}"), "T"),
                )
            })
            .collect(),
    )
    .await;

    let yaml = webhook_config(
        &server.url(),
        "HOOKBAD",
        &hook.url,
        "retry: { backoff: [50ms], max_attempts: 5 }",
    );
    let jetline = Running::start(&yaml);
    until_settled(&js, "HOOKBAD", "notify").await;
    jetline.stop().await;

    let by_key = hook.by_key();
    let delivered = by_key
        .values()
        .filter(|attempts| attempts.iter().any(|r| r.status == 200))
        .count();
    let letters = stream_messages(&js, "DLQ_HOOKBAD").await;
    assert_eq!(
        delivered + letters.len(),
        total,
        "published = applied + dead-lettered"
    );
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(dlq::REASON).as_deref(), Some("sink_rejected"));
        let id = decode_json(&serde_json::from_slice(&letter.payload).expect("json")).event_id;
        assert!(refused(&id), "{id} was not refused");
        assert_eq!(by_key[&id].len(), 1, "{id}: a 400 is not retried");
    }
}
