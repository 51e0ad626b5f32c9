//! Exact accounting of the replica tests' two sinks: a JetStream copy
//! (one message per event, subject `<prefix><aggregate>`) and a KV count
//! (`order.order-<i>` holding `events` and `last_event`). Event ids are
//! `<prefix>-<aggregate>-<n>`, numbered from 0 per aggregate.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream;
use serde_json::Value;

use super::{eventually, stream_messages};

/// The number an event id ends with.
pub fn event_number(event_id: &str) -> usize {
    event_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Asserts that the copies in `stream` are each aggregate's events
/// `0..per_aggregate`, once each and in order.
pub async fn assert_copied_once_in_order(
    js: &jetstream::Context,
    stream: &str,
    subject_prefix: &str,
    aggregates: usize,
    per_aggregate: usize,
) {
    let copied = stream_messages(js, stream).await;
    assert_eq!(
        copied.len(),
        aggregates * per_aggregate,
        "one copy per event"
    );
    let mut by_aggregate: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for message in &copied {
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.as_str().to_owned())
            .expect("an event id");
        let aggregate = message
            .subject
            .trim_start_matches(subject_prefix)
            .to_owned();
        by_aggregate
            .entry(aggregate)
            .or_default()
            .push(event_number(&id));
    }
    let expected: Vec<usize> = (0..per_aggregate).collect();
    for (aggregate, numbers) in &by_aggregate {
        assert_eq!(numbers, &expected, "order of {aggregate}");
    }
}

/// Waits until each aggregate's document in `bucket` counts
/// `per_aggregate` events, then asserts each was counted once, the last
/// one last.
pub async fn assert_counted_once(
    js: &jetstream::Context,
    bucket: &str,
    aggregates: usize,
    per_aggregate: usize,
    timeout: Duration,
) {
    let store = js.get_key_value(bucket).await.expect("bucket");
    let counts = eventually(timeout, "every event counted", || async {
        let mut counts = BTreeMap::new();
        for aggregate in 0..aggregates {
            let bytes = store.get(format!("order.order-{aggregate}")).await.ok()??;
            let document: Value = serde_json::from_slice(&bytes).ok()?;
            counts.insert(aggregate, document);
        }
        counts
            .values()
            .all(|document| document["events"].as_u64() >= Some(per_aggregate as u64))
            .then_some(counts)
    })
    .await;
    for (aggregate, document) in counts {
        assert_eq!(
            document["events"].as_u64(),
            Some(per_aggregate as u64),
            "{document}"
        );
        assert_eq!(
            document["last_event"].as_str(),
            Some(format!("order-{aggregate}-{}", per_aggregate - 1).as_str())
        );
    }
}
