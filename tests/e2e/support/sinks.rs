//! For the sink tests: a configuration of one source feeding one sink, and
//! waiting until a durable consumer has settled its whole stream.

use std::time::Duration;

use async_nats::jetstream;

use super::{config_yaml, eventually};

/// Source `orders` on `stream` (subjects `<stream>.>`) routed to the sink
/// `sink`, whose block (indented by four spaces) is `block`; dead letters in
/// `DLQ_<stream>`.
pub fn single_sink_yaml(url: &str, stream: &str, sink: &str, block: &str) -> String {
    config_yaml(
        url,
        &format!(
            "
sources:
  orders: {{ stream: {stream}, subjects: ['{stream}.>'] }}
sinks:
  {sink}:
{block}
routes:
  - {{ name: all, from: orders, to: [{sink}] }}
dead_letter: {{ stream: DLQ_{stream}, subject_prefix: dlq_{stream} }}
"
        ),
    )
}

/// Whether the consumer `durable` on `stream` exists and has every message
/// up to the stream's last one delivered and settled (acked or terminated).
pub async fn consumer_settled(js: &jetstream::Context, stream: &str, durable: &str) -> bool {
    let Ok(mut handle) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = handle.info().await else {
        return false;
    };
    let last = info.state.last_sequence;
    let Ok(mut consumer) = handle
        .get_consumer::<jetstream::consumer::pull::Config>(durable)
        .await
    else {
        return false;
    };
    match consumer.info().await {
        Ok(info) => {
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last
        }
        Err(_) => false,
    }
}

/// Waits until the consumer `jetline-orders-<sink>` settled all of `stream`.
pub async fn until_settled(js: &jetstream::Context, stream: &str, sink: &str) {
    let durable = format!("jetline-orders-{sink}");
    eventually(Duration::from_secs(90), "every event settled", || async {
        consumer_settled(js, stream, &durable).await.then_some(())
    })
    .await;
}

/// Source `s` on `stream` (subjects `<prefix>.>`) routed to every sink of
/// `sinks` (YAML lines of the `sinks:` block); dead letters in
/// `DLQ_<stream>`; `extra` appended.
pub fn custom_config(url: &str, stream: &str, prefix: &str, sinks: &str, extra: &str) -> String {
    let names: Vec<&str> = sinks
        .lines()
        .filter_map(|line| line.trim().split_once(':').map(|(name, _)| name))
        .filter(|name| !name.is_empty())
        .collect();
    config_yaml(
        url,
        &format!(
            "
sources:
  s: {{ stream: {stream}, subjects: ['{prefix}.>'] }}
sinks:
{sinks}
routes:
  - {{ name: all, from: s, to: [{}] }}
dead_letter: {{ stream: DLQ_{stream}, subject_prefix: dlq_{prefix} }}
{extra}
",
            names.join(", ")
        ),
    )
}
