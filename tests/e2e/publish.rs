//! `jetline publish` as the built binary against a real server: each stored
//! event printed with its stream sequence, optimistic concurrency with
//! `--expect-last-seq` and `--expect-aggregate-version` (exit 3 on a
//! conflict, nothing stored), concurrent appends to one aggregate of which
//! exactly one gets through, and a subject no stream captures.

use std::{
    io::Write,
    process::{Command, Output},
};

use async_nats::jetstream;
use serde_json::Value;

use crate::{security::copy_yaml, support::*};

/// A configuration file and the `jetline publish` runs made with it.
struct Publish {
    config: tempfile::NamedTempFile,
}

/// A finished run: exit code, stdout, stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// The `<subject> seq <N>` lines, as (subject, sequence).
    fn stored(&self) -> Vec<(String, u64)> {
        self.stdout
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (subject, label, seq) = (words.next()?, words.next()?, words.next()?);
                let seq = seq.parse().ok().filter(|_| label == "seq")?;
                Some((subject.to_owned(), seq))
            })
            .collect()
    }
}

impl Publish {
    /// A server with `stream` capturing `subjects`, and a configuration
    /// file for it (publish reads only its `nats` and `schemas`).
    async fn start(stream: &str, subjects: &[&str]) -> (NatsServer, jetstream::Context, Self) {
        let server = NatsServer::start();
        let js = server.jetstream().await;
        create_stream(&js, stream, subjects).await;
        let yaml = copy_yaml(&format!("url: \"{}\"", server.url()), stream);
        let mut config = tempfile::NamedTempFile::new().expect("config file");
        config.write_all(yaml.as_bytes()).expect("written");
        (server, js, Self { config })
    }

    /// The command publishing `events` (one JSON line each) with `args`.
    fn command(&self, events: &[Value], args: &[&str]) -> (Command, tempfile::NamedTempFile) {
        let mut input = tempfile::NamedTempFile::new().expect("input file");
        for event in events {
            writeln!(input, "{event}").expect("line written");
        }
        let mut command = Command::new(jetline_bin());
        command
            .args(["publish", "--config"])
            .arg(self.config.path())
            .args(args)
            .arg(input.path());
        (command, input)
    }

    fn run(&self, events: &[Value], args: &[&str]) -> Ran {
        let (mut command, _input) = self.command(events, args);
        command.output().expect("jetline publish runs").into()
    }
}

fn order(event_id: &str, aggregate_id: &str) -> Value {
    created_v3(event_id, aggregate_id, 100)
}

/// The event ids stored on `subject`, in stream order.
async fn ids_on(js: &jetstream::Context, stream: &str, subject: &str) -> Vec<String> {
    stream_messages(js, stream)
        .await
        .into_iter()
        .filter(|message| message.subject.as_str() == subject)
        .map(|message| {
            message
                .headers
                .get("Nats-Msg-Id")
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn an_aggregate_version_expectation_appends_or_exits_3_storing_nothing() {
    let (_server, js, publish) = Publish::start("PV", &["pv.>"]).await;
    let with = |version: &'static str| {
        [
            "--subject",
            "pv.{aggregate_id}",
            "--expect-aggregate-version",
            version,
        ]
    };

    // New aggregates: version 0 each; a subject's later lines one more each.
    let first = publish.run(
        &[order("a1", "o-1"), order("a2", "o-1"), order("b1", "o-2")],
        &with("0"),
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let stored: Vec<(String, u64)> = stream_messages(&js, "PV")
        .await
        .iter()
        .map(|message| (message.subject.to_string(), message.sequence))
        .collect();
    assert_eq!(
        first.stored(),
        stored,
        "each event printed with its sequence"
    );
    assert_eq!(ids_on(&js, "PV", "pv.o-1").await, ["a1", "a2"]);

    // o-1 is at version 2: expecting 1 is a conflict, and nothing is sent.
    let stale = publish.run(&[order("a3", "o-1")], &with("1"));
    assert_eq!(stale.code, Some(3), "{}", stale.stderr);
    for named in [
        "pv.o-1",
        "expected version 1",
        "found version 2",
        "sequence 2",
    ] {
        assert!(stale.stderr.contains(named), "{named}: {}", stale.stderr);
    }
    assert!(stale.stored().is_empty());
    assert_eq!(stream_count(&js, "PV").await, 3);

    // A conflict on a later line keeps what came before it.
    let partly = publish.run(&[order("b2", "o-2"), order("a3", "o-1")], &with("1"));
    assert_eq!(partly.code, Some(3), "{}", partly.stderr);
    assert!(
        partly.stderr.contains("line 2") && partly.stderr.contains("1 event published before it"),
        "{}",
        partly.stderr
    );
    assert_eq!(partly.stored().len(), 1);
    assert_eq!(ids_on(&js, "PV", "pv.o-2").await, ["b1", "b2"]);

    let current = publish.run(&[order("a3", "o-1")], &with("2"));
    assert_eq!(current.code, Some(0), "{}", current.stderr);
    assert_eq!(ids_on(&js, "PV", "pv.o-1").await, ["a1", "a2", "a3"]);
}

/// Writers racing to append to one new aggregate: the count each reads may
/// be stale, but the server's fence on the last sequence lets exactly one
/// writer's events in; every other exits 3.
#[tokio::test]
async fn concurrent_appends_to_one_aggregate_let_exactly_one_writer_in() {
    let (_server, js, publish) = Publish::start("PR", &["pr.>"]).await;
    let writers: Vec<_> = (0..6)
        .map(|writer| {
            let events: Vec<Value> = (0..3)
                .map(|n| order(&format!("w{writer}-{n}"), "o-1"))
                .collect();
            let (mut command, input) = publish.command(
                &events,
                &[
                    "--subject",
                    "pr.{aggregate_id}",
                    "--expect-aggregate-version",
                    "0",
                ],
            );
            let child = command
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("jetline publish starts");
            (child, input)
        })
        .collect();
    let ran: Vec<Ran> = writers
        .into_iter()
        .map(|(child, _input)| child.wait_with_output().expect("ends").into())
        .collect();
    let winners: Vec<usize> = (0..ran.len()).filter(|&w| ran[w].code == Some(0)).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        ran.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    for (writer, run) in ran.iter().enumerate() {
        if writer != winners[0] {
            assert_eq!(run.code, Some(3), "writer {writer}: {}", run.stderr);
            assert!(
                run.stderr.contains("conflict on subject pr.o-1"),
                "{}",
                run.stderr
            );
        }
    }
    let winner = winners[0];
    assert_eq!(
        ids_on(&js, "PR", "pr.o-1").await,
        (0..3).map(|n| format!("w{winner}-{n}")).collect::<Vec<_>>(),
        "one writer's events, in order, and nobody else's"
    );
}

#[tokio::test]
async fn an_expected_last_sequence_is_sent_and_enforced() {
    let (_server, js, publish) = Publish::start("PS", &["ps.>"]).await;
    let args = |seq: &'static str| ["--subject", "ps.{aggregate_id}", "--expect-last-seq", seq];

    let created = publish.run(&[order("s1", "o-1")], &args("0"));
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    assert_eq!(created.stored(), [("ps.o-1".to_owned(), 1)]);

    let stale = publish.run(&[order("s2", "o-1")], &args("0"));
    assert_eq!(stale.code, Some(3), "{}", stale.stderr);
    for named in ["ps.o-1", "expected last sequence 0", "found 1"] {
        assert!(stale.stderr.contains(named), "{named}: {}", stale.stderr);
    }
    assert_eq!(stream_count(&js, "PS").await, 1);

    // Another subject's messages do not count: the fence is per subject.
    let other = publish.run(&[order("t1", "o-2")], &args("0"));
    assert_eq!(other.code, Some(0), "{}", other.stderr);
    let next = publish.run(&[order("s2", "o-1")], &args("1"));
    assert_eq!(next.code, Some(0), "{}", next.stderr);
    assert_eq!(next.stored(), [("ps.o-1".to_owned(), 3)]);

    let two = publish.run(&[order("s3", "o-1"), order("s4", "o-1")], &args("3"));
    assert_eq!(two.code, Some(2), "{}", two.stderr);
    assert!(two.stderr.contains("exactly one"), "{}", two.stderr);
    assert_eq!(stream_count(&js, "PS").await, 3, "nothing sent");
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_named_with_what_was_published() {
    let (_server, js, publish) = Publish::start("PN", &["pn.o-1", "pn.o-2"]).await;

    // Line 3 has no stream; line 4, sent in the same window, is stored.
    let events = [
        order("n1", "o-1"),
        order("n2", "o-2"),
        order("n3", "o-3"),
        order("n4", "o-1"),
    ];
    let ran = publish.run(&events, &["--subject", "pn.{aggregate_id}"]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("line 3: no stream captures subject pn.o-3"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("2 events published before it"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("cannot connect"), "{}", ran.stderr);
    assert!(!ran.stdout.contains("published"), "{}", ran.stdout);
    assert_eq!(ran.stored().len(), 3, "{}", ran.stdout);
    assert_eq!(stream_count(&js, "PN").await, 3);

    // The same with an expectation, found before anything is sent.
    let expecting = publish.run(
        &[order("n5", "o-3")],
        &[
            "--subject",
            "pn.{aggregate_id}",
            "--expect-aggregate-version",
            "0",
        ],
    );
    assert_eq!(expecting.code, Some(1), "{}", expecting.stderr);
    assert!(
        expecting
            .stderr
            .contains("no stream captures subject pn.o-3")
            && expecting.stderr.contains("0 events published before it"),
        "{}",
        expecting.stderr
    );
}

#[test]
fn an_invalid_line_is_named_by_its_line_in_the_input_blank_lines_counted() {
    let config = root().join("config/jetline.yaml");
    let valid = serde_json::to_string(&order("e-1", "o-1")).expect("json");
    let input = format!("{valid}\n\n   \n{{\"eventId\": 7}}\n");
    let (code, _, stderr) = jetline_cli(
        &[
            "publish",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--subject",
            "orders.{aggregate_id}",
        ],
        &input,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 4:"), "{stderr}");
}
