//! The exact accounting at the end of a scenario: what each sink holds, read
//! from the sink itself (the output stream, the KV documents, the table, the
//! webhook's log) and from the dead-letter stream, compared message by
//! message with the model. Every published message must be applied exactly
//! once by each sink or be dead-lettered once by it with the expected
//! reason, and each aggregate's events must be applied in stream order.
//! Prints the scenario's table and fails the test on any difference.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use jetline::dead_letter::header as dlq;
use serde_json::Value;

use super::{
    model::{Content, Expected, Model},
    world::{
        BUCKET, COPY, COUNTS, DEAD_LETTER_STREAM, HOOK, OUTPUT_STREAM, ROWS, Recovery, TABLE, World,
    },
};

/// What one sink holds: the event ids it applied, in the order it applied
/// them, and how many aggregates its stored totals disagree with the model on.
pub struct SinkView {
    pub sink: String,
    pub applied: Vec<String>,
    pub model_mismatches: usize,
}

/// One dead-letter entry.
struct Letter {
    sink: String,
    reason: String,
    source_seq: u64,
}

/// One line of the table.
#[derive(Default)]
struct Row {
    sink: String,
    published: usize,
    applied: usize,
    dead_lettered: usize,
    duplicates: usize,
    missing: usize,
    wrong: usize,
    order_violations: usize,
    model_mismatches: usize,
    /// The first few differences, for the failure message.
    examples: Vec<String>,
}

impl Row {
    fn differences(&self) -> usize {
        self.duplicates + self.missing + self.wrong + self.order_violations + self.model_mismatches
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 5 {
            self.examples.push(text);
        }
    }
}

/// Log lines shown with a failure.
const LOG_TAIL: usize = 15;

/// A scenario's result: the table, notes, and the checks that failed.
pub struct Report {
    title: String,
    published: usize,
    poison: usize,
    aggregates: usize,
    rows: Vec<Row>,
    notes: Vec<String>,
    failures: Vec<String>,
    /// The end of the `jetline` process's log, shown when a check failed.
    log_tail: Vec<String>,
}

impl Report {
    pub fn new(title: &str, world: &World) -> Self {
        Self {
            title: title.to_owned(),
            published: world.model.published.len(),
            poison: world.model.poison_count(),
            aggregates: world.size.aggregates,
            rows: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            log_tail: Vec::new(),
        }
    }

    /// Reads the four sinks (and `extra` views, such as a custom sink's)
    /// and the dead-letter stream, and tallies each sink against the model.
    pub async fn account(&mut self, world: &World, extra: Vec<SinkView>) {
        let mut views = vec![
            read_copy(&world.js).await,
            read_counts(&world.js, &world.model).await,
            read_rows(world).await,
            read_hook(world),
        ];
        views.extend(extra);
        let log = world.jetline_log();
        let lines: Vec<&str> = log.lines().collect();
        self.log_tail = lines[lines.len().saturating_sub(LOG_TAIL)..]
            .iter()
            .map(|line| line.to_string())
            .collect();
        let letters = read_dead_letters(&world.js).await;
        for view in &views {
            let row = tally(&world.model, view, &letters);
            if row.differences() > 0 {
                self.failures.push(format!(
                    "{}: {} duplicates, {} missing, {} wrong outcome, {} order violations, {} model mismatches; {}",
                    row.sink,
                    row.duplicates,
                    row.missing,
                    row.wrong,
                    row.order_violations,
                    row.model_mismatches,
                    row.examples.join("; ")
                ));
            }
            self.rows.push(row);
        }
        let foreign = letters
            .iter()
            .filter(|letter| !views.iter().any(|view| view.sink == letter.sink))
            .count();
        self.check(
            foreign == 0,
            format!("{foreign} dead letters of sinks outside the run"),
        );
        self.note(format!(
            "webhook: {} repeated requests answered from the idempotency record, {} refused (503/429)",
            world.receiver.repeats(),
            world.receiver.refused()
        ));
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    /// Records a scenario check; `what` says what was seen.
    pub fn check(&mut self, passed: bool, what: String) {
        if !passed {
            self.failures.push(what);
        }
    }

    /// The checks and the note of a fault's end (`fault_end`: what ended it).
    pub fn recovery(&mut self, fault_end: &str, recovery: &Recovery) {
        self.check(
            recovery.recovered.is_some(),
            format!("no sink progress within 120 s of {fault_end}"),
        );
        self.check(
            recovery.settled,
            "the sinks did not settle every message".into(),
        );
        self.note(format!(
            "time to recover ({fault_end} to every sink settling again): {}; all settled {:.1} s after the start",
            seconds(recovery.recovered),
            recovery.elapsed.as_secs_f64()
        ));
    }

    /// Prints the table and fails the test if anything differed.
    pub fn finish(self) {
        let mut out = String::new();
        let _ = writeln!(out, "\n== {} ==", self.title);
        let _ = writeln!(
            out,
            "published {} messages over {} aggregates, {} of them poison",
            self.published, self.aggregates, self.poison
        );
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>9} {:>13} {:>10} {:>8} {:>6} {:>16} {:>16}",
            "sink",
            "published",
            "applied",
            "dead-lettered",
            "duplicates",
            "missing",
            "wrong",
            "order violations",
            "model mismatches"
        );
        for row in &self.rows {
            let _ = writeln!(
                out,
                "{:<8} {:>9} {:>9} {:>13} {:>10} {:>8} {:>6} {:>16} {:>16}",
                row.sink,
                row.published,
                row.applied,
                row.dead_lettered,
                row.duplicates,
                row.missing,
                row.wrong,
                row.order_violations,
                row.model_mismatches
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        if self.failures.is_empty() {
            let _ = writeln!(out, "RESULT {}: PASS", self.title);
        } else {
            if !self.log_tail.is_empty() {
                let _ = writeln!(out, "the end of jetline's log:");
                for line in &self.log_tail {
                    let _ = writeln!(out, "  {line}");
                }
            }
            for failure in &self.failures {
                let _ = writeln!(out, "FAILED: {failure}");
            }
            let _ = writeln!(out, "RESULT {}: FAIL", self.title);
        }
        println!("{out}");
        assert!(
            self.failures.is_empty(),
            "{}: {}",
            self.title,
            self.failures.join(" | ")
        );
    }
}

/// `1.2 s`, or `never`.
pub fn seconds(duration: Option<Duration>) -> String {
    duration.map_or("never".into(), |duration| {
        format!("{:.1} s", duration.as_secs_f64())
    })
}

/// Compares what `view.sink` holds with the model.
fn tally(model: &Model, view: &SinkView, letters: &[Letter]) -> Row {
    let mut row = Row {
        sink: view.sink.clone(),
        published: model.published.len(),
        model_mismatches: view.model_mismatches,
        ..Row::default()
    };
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for id in &view.applied {
        *applied.entry(id.as_str()).or_default() += 1;
    }
    let mut lettered: HashMap<u64, Vec<&str>> = HashMap::new();
    for letter in letters.iter().filter(|letter| letter.sink == view.sink) {
        lettered
            .entry(letter.source_seq)
            .or_default()
            .push(&letter.reason);
    }
    for message in &model.published {
        let times_applied = message
            .event_id()
            .and_then(|id| applied.get(id).copied())
            .unwrap_or(0);
        let reasons = lettered.get(&message.seq).cloned().unwrap_or_default();
        row.applied += usize::from(times_applied > 0);
        row.dead_lettered += usize::from(!reasons.is_empty());
        let outcomes = times_applied + reasons.len();
        if outcomes == 0 {
            row.missing += 1;
            row.example(format!(
                "seq {} neither applied nor dead-lettered",
                message.seq
            ));
        }
        if outcomes > 1 {
            row.duplicates += outcomes - 1;
            row.example(format!(
                "seq {} applied {times_applied} times, dead-lettered {reasons:?}",
                message.seq
            ));
        }
        let right = match model.expected(&view.sink, message) {
            Expected::Applied => outcomes == 0 || times_applied > 0,
            Expected::DeadLetter(reason) => {
                times_applied == 0 && reasons.iter().all(|seen| *seen == reason)
            }
        };
        if !right {
            row.wrong += 1;
            row.example(format!(
                "seq {} expected {:?}, applied {times_applied} times, dead-lettered {reasons:?}",
                message.seq,
                model.expected(&view.sink, message)
            ));
        }
    }
    let unknown_ids = view
        .applied
        .iter()
        .filter(|id| model.by_event_id(id).is_none())
        .count();
    let published_seqs = model
        .published
        .iter()
        .map(|message| message.seq)
        .collect::<std::collections::HashSet<_>>();
    let unknown_letters = lettered
        .keys()
        .filter(|seq| !published_seqs.contains(seq))
        .count();
    if unknown_ids + unknown_letters > 0 {
        row.wrong += unknown_ids + unknown_letters;
        row.example(format!(
            "{unknown_ids} applied ids and {unknown_letters} dead letters the model does not have"
        ));
    }
    let mut last_n: HashMap<&str, usize> = HashMap::new();
    for id in &view.applied {
        let Some(Content::Good(good)) = model.by_event_id(id).map(|message| &message.content)
        else {
            continue;
        };
        if let Some(&last) = last_n.get(good.aggregate_id.as_str())
            && good.n <= last
        {
            row.order_violations += 1;
            row.example(format!(
                "{} applied after event {last} of its aggregate",
                good.event_id
            ));
        }
        let last = last_n.entry(good.aggregate_id.as_str()).or_insert(good.n);
        *last = (*last).max(good.n);
    }
    row
}

/// Every message of `stream`, through an ordered consumer (one request per
/// batch, not per message).
async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<jetstream::Message> {
    let Ok(mut handle) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let count = handle
        .info()
        .await
        .map(|info| info.state.messages)
        .unwrap_or(0) as usize;
    if count == 0 {
        return Vec::new();
    }
    let consumer = handle
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(Ok(message))) => out.push(message),
            Ok(Some(Err(error))) => panic!("reading {stream}: {error}"),
            Ok(None) | Err(_) => panic!("{stream} ended after {} of {count} messages", out.len()),
        }
    }
    out
}

fn header(message: &jetstream::Message, name: &str) -> String {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default()
}

async fn read_dead_letters(js: &jetstream::Context) -> Vec<Letter> {
    read_stream(js, DEAD_LETTER_STREAM)
        .await
        .iter()
        .map(|message| Letter {
            sink: header(message, dlq::SINK),
            reason: header(message, dlq::REASON),
            source_seq: header(message, dlq::SOURCE_SEQ).parse().unwrap_or(0),
        })
        .collect()
}

/// The JetStream copy: one message per applied event, `Nats-Msg-Id` its id.
async fn read_copy(js: &jetstream::Context) -> SinkView {
    SinkView {
        sink: COPY.to_owned(),
        applied: read_stream(js, OUTPUT_STREAM)
            .await
            .iter()
            .map(|message| header(message, "Nats-Msg-Id"))
            .collect(),
        model_mismatches: 0,
    }
}

/// The KV documents: `applied` lists the event ids in the order applied;
/// `events` and `total_cents` must equal the model's count and sum.
async fn read_counts(js: &jetstream::Context, model: &Model) -> SinkView {
    let totals = model.totals(COUNTS);
    let mut view = SinkView {
        sink: COUNTS.to_owned(),
        applied: Vec::new(),
        model_mismatches: 0,
    };
    // A bucket Jetline never created holds nothing: every event missing.
    let Ok(store) = js.get_key_value(BUCKET).await else {
        view.model_mismatches = totals.len();
        return view;
    };
    for aggregate_id in model.aggregate_ids() {
        let document: Value = match store.get(&aggregate_id).await.expect("kv get") {
            Some(bytes) => serde_json::from_slice(&bytes).expect("a JSON document"),
            None => Value::Null,
        };
        let stored = (
            document["events"].as_i64().unwrap_or(0),
            document["total_cents"].as_i64().unwrap_or(0),
        );
        if stored != totals.get(&aggregate_id).copied().unwrap_or_default() {
            view.model_mismatches += 1;
        }
        if let Some(ids) = document["applied"].as_array() {
            view.applied
                .extend(ids.iter().filter_map(|id| id.as_str().map(str::to_owned)));
        }
    }
    view
}

/// The table: one row per application, `seq` in the order applied; the
/// count and sum per aggregate must equal the model's.
async fn read_rows(world: &World) -> SinkView {
    let client = world.postgres.client().await;
    let applied = client
        .query(&format!("SELECT event_id FROM {TABLE} ORDER BY seq"), &[])
        .await
        .expect("rows read")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let stored: BTreeMap<String, (i64, i64)> = client
        .query(
            &format!(
                "SELECT aggregate_id, count(*), sum(amount_cents)::bigint FROM {TABLE} GROUP BY aggregate_id"
            ),
            &[],
        )
        .await
        .expect("totals read")
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let expected = world.model.totals(ROWS);
    let mismatches = expected
        .iter()
        .filter(|(aggregate, totals)| stored.get(*aggregate) != Some(totals))
        .count()
        + stored
            .keys()
            .filter(|aggregate| !expected.contains_key(*aggregate))
            .count();
    SinkView {
        sink: ROWS.to_owned(),
        applied,
        model_mismatches: mismatches,
    }
}

fn read_hook(world: &World) -> SinkView {
    SinkView {
        sink: HOOK.to_owned(),
        applied: world
            .receiver
            .applied()
            .into_iter()
            .map(|request| request.event_id)
            .collect(),
        model_mismatches: 0,
    }
}
