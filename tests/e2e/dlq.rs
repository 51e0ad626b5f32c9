//! `jetline dlq list | show | redrive` end to end: entries listed and
//! filtered, shown with their envelope, redriven to the sink that failed
//! (others skip them), and an entry that fails again comes back with its
//! history instead of looping.

use std::{io::Write, process::Command, time::Duration};

use jetline::{dead_letter::header as dlq, sink::custom::CustomSinks};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Cli {
    file: tempfile::NamedTempFile,
}

impl Cli {
    fn new(yaml: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("config file");
        file.write_all(yaml.as_bytes()).expect("written");
        Self { file }
    }

    fn dlq(&self, args: &[&str]) -> String {
        let output = Command::new(jetline_bin())
            .arg("dlq")
            .arg("--config")
            .arg(self.file.path())
            .args(args)
            .output()
            .expect("jetline dlq runs");
        assert!(
            output.status.success(),
            "dlq {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Cli {
    /// The exit code of a `dlq` command expected to fail.
    fn dlq_status(&self, args: &[&str]) -> Option<i32> {
        Command::new(jetline_bin())
            .arg("dlq")
            .arg("--config")
            .arg(self.file.path())
            .args(args)
            .output()
            .expect("jetline dlq runs")
            .status
            .code()
    }
}

/// Two custom sinks, `main` and `other`, reading `stream`; dead letters in
/// `DLQ_<stream>` on `dlq_<prefix>.>`.
fn two_sinks_yaml(url: &str, stream: &str, prefix: &str) -> String {
    custom_config(
        url,
        stream,
        prefix,
        "  main: { type: custom }\n  other: { type: custom }",
        "",
    )
}

fn data_rows(table: &str) -> Vec<String> {
    table.lines().skip(1).map(str::to_owned).collect()
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_once() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "DQ", &["dq.>"]).await;
    let yaml = two_sinks_yaml(&server.url(), "DQ", "dq");
    let mut bad_payload = created_v3("dq-bad", "order-9", 1);
    bad_payload["payload"]["totalAmountCents"] = "lots".into();
    let events = vec![
        Outgoing::binary("dq.a", &created_v3("dq-1", "order-1", 1)),
        Outgoing::binary("dq.a", &created_v3("dq-2", "order-2", 2)),
        Outgoing::binary("dq.a", &created_v3("dq-3", "order-3", 3)),
        Outgoing::json("dq.b", &bad_payload),
    ];
    publish_all(&js, events).await;

    // First run: `main` rejects two events; the bad payload fails everywhere.
    let main = FlakySink::with_plan([
        ("dq-1".to_owned(), Plan::Reject),
        ("dq-3".to_owned(), Plan::Reject),
    ]);
    let other = FlakySink::default();
    let sinks = CustomSinks::new()
        .register("main", main.clone())
        .register("other", other.clone());
    let jetline = Running::start_with(&yaml, sinks);
    eventually(TIMEOUT, "four dead letters", || async {
        (stream_count(&js, "DLQ_DQ").await == 4 && other.applied_count() == 3).then_some(())
    })
    .await;
    jetline.stop().await;
    assert_eq!(main.applied_count(), 1);

    let cli = Cli::new(&yaml);
    let all = data_rows(&cli.dlq(&["list"]));
    assert_eq!(all.len(), 4, "{all:?}");
    let rejected = data_rows(&cli.dlq(&["list", "--reason", "sink_rejected"]));
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected
            .iter()
            .all(|row| row.contains("main") && row.contains("orders.OrderCreated"))
    );
    assert_eq!(data_rows(&cli.dlq(&["list", "--sink", "other"])).len(), 1);
    assert_eq!(data_rows(&cli.dlq(&["list", "--since", "1h"])).len(), 4);

    let first_seq: u64 = rejected[0]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("seq column");
    let shown: serde_json::Value =
        serde_json::from_str(&cli.dlq(&["show", &first_seq.to_string()])).expect("json");
    assert_eq!(shown["reason"], "sink_rejected");
    assert_eq!(shown["envelope"]["eventId"], "dq-1");
    assert_eq!(shown["envelope"]["payload"]["totalAmountCents"], "1");

    cli.dlq(&["redrive", "--reason", "sink_rejected", "--dry-run"]);
    assert_eq!(
        stream_count(&js, "DLQ_DQ").await,
        4,
        "a dry run changes nothing"
    );

    // A sink the configuration does not have is a usage error, and nothing
    // leaves the dead-letter stream.
    let refused = cli.dlq_status(&[
        "redrive",
        "--reason",
        "sink_rejected",
        "--to-sink",
        "nosuch",
    ]);
    assert_eq!(refused, Some(2));
    assert_eq!(stream_count(&js, "DLQ_DQ").await, 4, "nothing removed");

    let redriven = cli.dlq(&["redrive", "--reason", "sink_rejected"]);
    assert!(redriven.contains("2 entries redriven"), "{redriven}");
    assert_eq!(stream_count(&js, "DLQ_DQ").await, 2);
    assert_eq!(
        stream_count(&js, "DQ").await,
        6,
        "republished to the source subject"
    );

    // The bad payload, redriven to `main` only, fails again: one new entry
    // with its history, never a loop.
    let bad_seq = data_rows(&cli.dlq(&["list", "--sink", "main", "--reason", "invalid_payload"]))
        [0]
    .split_whitespace()
    .next()
    .and_then(|s| s.parse::<u64>().ok())
    .expect("seq column");
    cli.dlq(&["redrive", "--seq", &bad_seq.to_string()]);

    // Second run: `main` now accepts; `other` skips what was redriven for `main`.
    let main_again = FlakySink::default();
    let other_again = FlakySink::default();
    let sinks = CustomSinks::new()
        .register("main", main_again.clone())
        .register("other", other_again.clone());
    let jetline = Running::start_with(&yaml, sinks);
    eventually(TIMEOUT, "redriven events applied by main", || async {
        (main_again.applied_count() == 2 && stream_count(&js, "DLQ_DQ").await == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    jetline.stop().await;

    let mut applied: Vec<String> = main_again
        .applied()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    applied.sort();
    assert_eq!(applied, ["dq-1", "dq-3"]);
    assert_eq!(
        other_again.applied_count(),
        0,
        "other sinks skip an event redriven for main"
    );
    let letters = stream_messages(&js, "DLQ_DQ").await;
    let again = letters
        .iter()
        .find(|l| l.headers.get(dlq::HISTORY).is_some())
        .expect("the failed redrive is back with its history");
    assert_eq!(
        again.headers.get(dlq::REASON).map(|v| v.as_str()),
        Some("invalid_payload")
    );
    assert!(
        again
            .headers
            .get(dlq::HISTORY)
            .is_some_and(|h| h.as_str().contains("main invalid_payload"))
    );
    assert_eq!(letters.len(), 2, "other's entry and the failed redrive");
}

/// `--config` is read before or after the `dlq` subcommand; a `--sink`
/// that is neither configured nor named by an entry is a usage error, not
/// an empty table, while a sink since removed still lists its entries.
#[tokio::test]
async fn the_config_goes_either_side_and_an_unknown_sink_is_refused() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "DLQ_CF", &["dlq_cf.>"]).await;
    // Entries as Jetline stores them, of a configured sink and of one since removed.
    let entry = |sink: &str| {
        Outgoing::json(
            &format!("dlq_cf.{sink}.sink_rejected"),
            &created_v3(&format!("cf-{sink}"), "order-1", 1),
        )
        .header(dlq::SINK, sink)
        .header(dlq::REASON, "sink_rejected")
        .header(dlq::ERROR, "refused")
    };
    publish_all(&js, vec![entry("main"), entry("removed")]).await;
    let cli = Cli::new(&two_sinks_yaml(&server.url(), "CF", "cf"));
    let run = |args: &[&str]| {
        Command::new(jetline_bin())
            .args(args)
            .output()
            .expect("jetline dlq runs")
    };
    let config = cli.file.path().to_str().expect("a UTF-8 path");

    let before = run(&["dlq", "--config", config, "list", "--sink", "main"]);
    let after = run(&["dlq", "list", "--sink", "main", "--config", config]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(before.stdout, after.stdout);
    assert_eq!(data_rows(&String::from_utf8_lossy(&after.stdout)).len(), 1);

    let unknown = run(&["dlq", "list", "--config", config, "--sink", "nosuch"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nosuch") && stderr.contains("main, other"),
        "{stderr}"
    );
    assert!(unknown.stdout.is_empty(), "no table");
    assert_eq!(cli.dlq_status(&["redrive", "--sink", "nosuch"]), Some(2));

    let removed = cli.dlq(&["list", "--sink", "removed"]);
    assert_eq!(data_rows(&removed).len(), 1, "{removed}");
}
