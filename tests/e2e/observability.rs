//! Observability: `/readyz` follows the NATS connection; a backlog shows in
//! the lag gauges (events and seconds, read from the server) and they fall to
//! zero as it drains; `jetline status` prints the same figures; a real
//! Prometheus scrapes Jetline, and every query of the shipped dashboard and
//! alert rules returns data; promtool accepts `/metrics` and the rule tests.

use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;
use time::OffsetDateTime;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration of `config_yaml`, with the metrics endpoint on `port`.
fn observed_yaml(url: &str, port: u16, body: &str) -> String {
    let yaml = config_yaml(url, body);
    let ephemeral = "listen: \"127.0.0.1:0\"";
    assert!(
        yaml.contains(ephemeral),
        "config_yaml sets the metrics address"
    );
    yaml.replace(ephemeral, &format!("listen: \"127.0.0.1:{port}\""))
}

/// One source into one JetStream sink whose stream does not exist yet, so its
/// writes fail and are retried until the test creates it.
fn blocked_sink_yaml(url: &str, port: u16, name: &str) -> String {
    observed_yaml(
        url,
        port,
        &format!(
            "
sources:
  {name}: {{ stream: {upper}, subjects: ['{name}.>'] }}
sinks:
  {name}_out:
    type: jetstream
    subject: '{name}out.{{aggregate_id}}'
    max_ack_pending: 4
    retry: {{ max_attempts: 1000, backoff: [100ms], jitter: 0.0 }}
routes:
  - {{ name: all, from: {name}, to: [{name}_out] }}
dead_letter: {{ stream: DLQ_{upper}, subject_prefix: dlq_{name} }}
",
            upper = name.to_uppercase()
        ),
    )
}

fn good_events(name: &str, count: u64) -> Vec<Outgoing> {
    (0..count)
        .map(|n| {
            let event = created_v3(&format!("{name}-{n}"), &format!("order-{n}"), n as i64);
            Outgoing::binary(&format!("{name}.created"), &event)
        })
        .collect()
}

async fn scrape(port: u16) -> Option<String> {
    http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .filter(|(status, _)| *status == 200)
        .map(|(_, page)| page)
}

/// The four lag gauges of one consumer on a `/metrics` page.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Gauges {
    pending: f64,
    ack_pending: f64,
    redelivered: f64,
    lag_seconds: f64,
}

fn gauges(page: &str, consumer: &str) -> Option<Gauges> {
    let labels = [("consumer", consumer)];
    Some(Gauges {
        pending: metric_value(page, "jetline_consumer_pending_messages", &labels)?,
        ack_pending: metric_value(page, "jetline_consumer_ack_pending_messages", &labels)?,
        redelivered: metric_value(page, "jetline_consumer_redelivered_messages", &labels)?,
        lag_seconds: metric_value(page, "jetline_consumer_lag_seconds", &labels)?,
    })
}

const CAUGHT_UP: Gauges = Gauges {
    pending: 0.0,
    ack_pending: 0.0,
    redelivered: 0.0,
    lag_seconds: 0.0,
};

/// Seconds since the message `seq` of `stream` was published.
async fn age_of_message(js: &async_nats::jetstream::Context, stream: &str, seq: u64) -> f64 {
    let message = js
        .get_stream(stream)
        .await
        .expect("stream exists")
        .get_raw_message(seq)
        .await
        .expect("the message is stored");
    (OffsetDateTime::now_utc() - message.time).as_seconds_f64()
}

/// `jetline status` on `yaml`: exit code and the figures of `consumer`'s line
/// (pending, ack pending, redelivered, lag seconds, parked), if it has them.
async fn status(yaml: &str, consumer: &str) -> (i32, Option<[f64; 5]>) {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(yaml.as_bytes()).expect("config written");
    let output = tokio::process::Command::new(jetline_bin())
        .args(["status", "--config"])
        .arg(file.path())
        .env("JETLINE_LOG", "warn")
        .output()
        .await
        .expect("jetline status runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figures = stdout
        .lines()
        .find(|line| line.starts_with(consumer))
        .and_then(|line| {
            let numbers: Vec<f64> = line
                .split_whitespace()
                .skip(3)
                .map_while(|cell| cell.parse().ok())
                .collect();
            numbers.try_into().ok()
        });
    (output.status.code().unwrap_or(-1), figures)
}

/// `/readyz` on `base`: its status and JSON body.
async fn readyz(base: &str) -> Option<(u16, Value)> {
    let (status, body) = http_get(&format!("{base}/readyz")).await?;
    let body: Value = serde_json::from_str(&body).expect("/readyz answers JSON");
    Some((status, body))
}

/// Waits until `/readyz` answers `wanted`; returns its body.
async fn readyz_answering(base: &str, wanted: u16) -> Value {
    eventually(TIMEOUT, &format!("/readyz answering {wanted}"), || async {
        readyz(base)
            .await
            .filter(|(status, _)| *status == wanted)
            .map(|(_, body)| body)
    })
    .await
}

#[tokio::test]
async fn readyz_answers_503_with_a_reason_until_nats_is_reachable() {
    let mut server = NatsServer::start();
    create_stream(&server.jetstream().await, "READY", &["ready.>"]).await;
    server.stop();

    let port = free_port();
    let yaml = blocked_sink_yaml(&server.url(), port, "ready")
        .replace("nats: {", "nats: { connect_timeout: 120s,");
    // The binary, not in-process: `jetline_nats_connected` is one gauge per
    // process, and other tests connect in this one.
    let _jetline = Process::start(&yaml);
    let base = format!("http://127.0.0.1:{port}");
    let connected = || async { metric_value(&scrape(port).await?, "jetline_nats_connected", &[]) };

    let (status, body) = eventually(TIMEOUT, "the endpoints listening", || readyz(&base)).await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty()),
        "{body}"
    );
    assert_eq!(
        http_get(&format!("{base}/healthz"))
            .await
            .map(|(status, _)| status),
        Some(200),
        "alive while not ready"
    );
    assert_eq!(connected().await, Some(0.0));

    server.restart();
    assert_eq!(readyz_answering(&base, 200).await["ready"], true);
    assert_eq!(connected().await, Some(1.0));
    let page = scrape(port).await.expect("/metrics");
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        metric_value(&page, "jetline_build_info", &version),
        Some(1.0)
    );

    // Losing NATS makes it unready again, and its return ready.
    server.stop();
    assert!(readyz_answering(&base, 503).await["reason"].is_string());
    assert_eq!(connected().await, Some(0.0));
    server.restart();
    readyz_answering(&base, 200).await;
}

#[tokio::test]
async fn a_backlog_shows_in_pending_and_lag_seconds_then_both_fall_to_zero_as_it_drains() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "BACKLOG", &["backlog.>"]).await;
    // Older messages the consumer's filter does not select: they must not
    // count in its lag.
    let ignored = 3u64;
    let mut older = good_events("ignored", ignored);
    for message in &mut older {
        message.subject = "backlog.ignored".into();
    }
    publish_all(&js, older).await;
    let aged = Duration::from_secs(1);
    tokio::time::sleep(aged).await;
    let total = 20u64;
    publish_all(&js, good_events("backlog", total)).await;
    // The backlog ages before Jetline starts: a lag counted from anything but
    // the publish time (start-up, first delivery) would be smaller.
    tokio::time::sleep(aged).await;

    let port = free_port();
    // Two filter subjects, one of which has no messages.
    let yaml = blocked_sink_yaml(&server.url(), port, "backlog").replace(
        "from: backlog, to:",
        "from: backlog, match: { subjects: [backlog.created, backlog.shipped] }, to:",
    );
    let consumer = "jetline-backlog-backlog_out";
    let (code, figures) = status(&yaml, consumer).await;
    assert_eq!(
        (code, figures),
        (1, None),
        "status before the consumer exists"
    );

    let jetline = Running::start(&yaml);
    let blocked = eventually(
        TIMEOUT,
        "retries of the blocked sink in the gauges",
        || async {
            let gauges = gauges(&scrape(port).await?, consumer)?;
            (gauges.redelivered > 0.0).then_some(gauges)
        },
    )
    .await;
    assert_eq!(
        blocked.pending + blocked.ack_pending,
        total as f64,
        "{blocked:?}"
    );
    assert_eq!(
        blocked.ack_pending, 4.0,
        "max_ack_pending delivered: {blocked:?}"
    );
    assert!(blocked.lag_seconds >= aged.as_secs_f64(), "{blocked:?}");
    let first_selected = ignored + 1;
    assert!(
        blocked.lag_seconds <= age_of_message(&js, "BACKLOG", first_selected).await,
        "{blocked:?}"
    );
    let page = scrape(port).await.expect("/metrics");
    let sink = [("sink", "backlog_out"), ("outcome", "retried")];
    assert!(metric_value(&page, "jetline_events_total", &sink).is_some_and(|n| n > 0.0));

    let (code, figures) = status(&yaml, consumer).await;
    assert_eq!(code, 0);
    let [pending, ack_pending, _, lag_seconds, parked] = figures.expect("figures of the consumer");
    assert_eq!(parked, 0.0, "nothing parked");
    assert_eq!(pending + ack_pending, total as f64);
    assert!(lag_seconds >= aged.as_secs_f64());

    create_stream(&js, "BACKLOG_OUT", &["backlogout.>"]).await;
    eventually(TIMEOUT, "the backlog applied", || async {
        (stream_count(&js, "BACKLOG_OUT").await == total).then_some(())
    })
    .await;
    eventually(TIMEOUT, "the gauges at zero", || async {
        (gauges(&scrape(port).await?, consumer)? == CAUGHT_UP).then_some(())
    })
    .await;
    let page = scrape(port).await.expect("/metrics");
    let applied = [("sink", "backlog_out"), ("outcome", "applied")];
    assert_eq!(
        metric_value(&page, "jetline_events_total", &applied),
        Some(total as f64)
    );
    let dead = stream_count(&js, "DLQ_BACKLOG").await;
    assert_eq!(
        stream_count(&js, "BACKLOG_OUT").await + dead,
        total,
        "published = applied + dead-lettered"
    );
    assert_eq!(dead, 0);
    let (code, figures) = status(&yaml, consumer).await;
    assert_eq!((code, figures), (0, Some([0.0; 5])));
    jetline.stop().await;
}

/// Grafana's variables, as the test fills them in.
fn fill_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$sink", ".*")
}

/// Every `expr` in the dashboard, with where it stands.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has an expr");
            queries.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(definition) = variable["definition"].as_str() {
            // label_values(SELECTOR, label) lists the label of SELECTOR's series.
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|rest| rest.rsplit_once(','))
                .expect("variables use label_values(selector, label)");
            let expr = format!("count by ({}) ({})", inner.1.trim(), inner.0);
            queries.push((format!("variable {:?}", variable["name"]), expr));
        }
    }
    queries
}

#[test]
fn the_dashboard_has_a_query_behind_every_panel() {
    let dashboard: Value =
        serde_json::from_str(&shipped("config/grafana/jetline-dashboard.json")).expect("JSON");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        titles.insert(panel["title"].as_str().expect("a title").to_owned());
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has a query", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }
    for wanted in [
        "Lag in events per sink",
        "Lag in seconds per sink",
        "Events per second by outcome",
        "Sink write latency",
        "End-to-end latency",
        "Dead letters by reason",
    ] {
        assert!(titles.contains(wanted), "panel {wanted}");
    }
}

#[test]
fn the_shipped_prometheus_files_pass_promtool() {
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let (code, output) = promtool(&args, None);
        assert_eq!(code, 0, "promtool {args:?}:\n{output}");
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_lag_and_every_dashboard_and_alert_query_returns_data() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "PROM", &["prom.>"]).await;
    let port = free_port();
    let consumer = "jetline-prom-prom_out";
    let jetline = Running::start(&blocked_sink_yaml(&server.url(), port, "prom"));
    eventually(TIMEOUT, "Jetline ready", || async {
        let (status, _) = http_get(&format!("http://127.0.0.1:{port}/readyz")).await?;
        (status == 200).then_some(())
    })
    .await;
    let prometheus = Prometheus::start(([127, 0, 0, 1], port).into()).await;
    let value = |expr: String| {
        let prometheus = &prometheus;
        async move {
            let samples = prometheus
                .query(&expr)
                .await
                .unwrap_or_else(|err| panic!("{expr}: {err}"));
            samples.first().map(|sample| sample.value)
        }
    };
    eventually(TIMEOUT, "Prometheus scraping Jetline", || async {
        (value("up{job=\"jetline\"} == 1".into()).await.is_some()).then_some(())
    })
    .await;

    // One invalid event (dead-lettered at once), then a backlog the sink
    // cannot write yet.
    let mut invalid = created_v3("prom-invalid", "order-x", 1);
    invalid["payload"]["colour"] = "red".into();
    let total = 12u64;
    let mut batch = vec![Outgoing::json("prom.created", &invalid)];
    batch.extend(good_events("prom", total));
    publish_all(&js, batch).await;

    let selector = format!("{{consumer=\"{consumer}\"}}");
    let lag = eventually(TIMEOUT, "a lag of a second in Prometheus", || async {
        value(format!("jetline_consumer_lag_seconds{selector} >= 1")).await
    })
    .await;
    // Sequence 1 is the invalid event, dead-lettered at once.
    assert!(lag <= age_of_message(&js, "PROM", 2).await, "lag {lag}");
    let waiting = value(format!(
        "jetline_consumer_pending_messages{selector} + jetline_consumer_ack_pending_messages{selector}"
    ))
    .await;
    assert_eq!(waiting, Some(total as f64));
    let pending = value(format!("jetline_consumer_pending_messages{selector}")).await;
    assert_eq!(
        pending,
        Some(total as f64 - 4.0),
        "max_ack_pending 4 delivered"
    );

    create_stream(&js, "PROM_OUT", &["promout.>"]).await;
    eventually(TIMEOUT, "the backlog applied", || async {
        (stream_count(&js, "PROM_OUT").await == total).then_some(())
    })
    .await;
    eventually(TIMEOUT, "pending and lag at zero in Prometheus", || async {
        let pending = value(format!("jetline_consumer_pending_messages{selector}")).await?;
        let ack_pending = value(format!("jetline_consumer_ack_pending_messages{selector}")).await?;
        let lag = value(format!("jetline_consumer_lag_seconds{selector}")).await?;
        (pending == 0.0 && ack_pending == 0.0 && lag == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        stream_count(&js, "PROM_OUT").await + stream_count(&js, "DLQ_PROM").await,
        total + 1,
        "published = applied + dead-lettered"
    );
    let dead_letters = "jetline_dead_letters_total{sink=\"prom_out\", reason=\"invalid_payload\"}";
    eventually(TIMEOUT, "the dead letter in Prometheus", || async {
        (value(dead_letters.into()).await? == 1.0).then_some(())
    })
    .await;

    // Every dashboard query returns data, and a number.
    let dashboard: Value =
        serde_json::from_str(&shipped("config/grafana/jetline-dashboard.json")).expect("JSON");
    for (place, expr) in dashboard_queries(&dashboard) {
        let expr = fill_variables(&expr);
        let samples = prometheus
            .query(&expr)
            .await
            .unwrap_or_else(|err| panic!("{place}: {expr}: {err}"));
        assert!(
            samples.iter().any(|sample| sample.value.is_finite()),
            "{place} is empty: {expr} gave {samples:?}"
        );
    }

    // Every alert rule is loaded and evaluates, and names only series that
    // Jetline (or the scrape, for `up`) exports.
    let groups = prometheus.rule_groups().await;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect();
    let names: BTreeSet<&str> = rules
        .iter()
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "JetlineConsumerStalled",
            "JetlineDeadLetters",
            "JetlineDown",
            "JetlineLagHigh",
            "JetlineNotReady",
        ])
    );
    let selectors = regex::Regex::new(r"\b(jetline_[a-z_]+|up)\b(\{[^}]*\})?").expect("regex");
    for rule in rules {
        let query = rule["query"].as_str().expect("a rule has a query");
        let evaluated = eventually(TIMEOUT, "the rule evaluated", || async {
            let groups = prometheus.rule_groups().await;
            let health = groups
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .find(|other| other["name"] == rule["name"])
                .map(|other| other["health"].clone())?;
            (health != "unknown").then_some(health)
        })
        .await;
        assert_eq!(
            evaluated,
            "ok",
            "{}: {query}\n{}",
            rule["name"],
            prometheus.log()
        );
        prometheus
            .query(query)
            .await
            .unwrap_or_else(|err| panic!("{query}: {err}"));
        let mut named = 0;
        for selector in selectors.find_iter(query) {
            named += 1;
            let samples = prometheus
                .query(selector.as_str())
                .await
                .expect("a selector evaluates");
            assert!(
                !samples.is_empty(),
                "{}: {} has no data",
                rule["name"],
                selector.as_str()
            );
        }
        assert!(named > 0, "{query} names a metric");
    }

    // promtool accepts what Jetline serves.
    let page = scrape(port).await.expect("/metrics");
    let (code, output) = promtool(&["check", "metrics"], Some(&page));
    assert_eq!(code, 0, "promtool check metrics:\n{output}");
    jetline.stop().await;
}
