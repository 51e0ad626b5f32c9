//! `jetline publish`: publishes JSON envelopes (one per line) to a subject,
//! validated against the schemas and encoded as binary protobuf (default) or
//! JSON; `--raw` sends lines as they are, to try invalid input. Every line is
//! checked before the first is sent, and each stored event is printed with
//! its stream sequence.
//!
//! Plain publishes are pipelined: a window sent, then its acks awaited. With
//! an expectation (`--expect-last-seq`, `--expect-aggregate-version`) each
//! publish carries `Nats-Expected-Last-Subject-Sequence`, so the server
//! refuses it (error 10071) when another writer appended to the subject
//! first; those publishes go one at a time, each fenced on the one before.

use std::{collections::HashMap, io::BufRead, sync::Arc};

use async_nats::{
    HeaderMap, HeaderValue,
    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
    jetstream::{
        self,
        context::{GetStreamByNameErrorKind, PublishAckFuture, PublishErrorKind},
        publish::PublishAck,
        stream::LastRawMessageErrorKind,
    },
};
use bytes::Bytes;
use futures::TryStreamExt as _;

use crate::{
    Config, RunError,
    envelope::{CONTENT_TYPE_JSON, Encoding},
    nats,
    telemetry::Readiness,
    template::Template,
};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Subject to publish to; may use `{aggregate_id}`, `{event_type}`, ...
    #[arg(long)]
    pub subject: String,
    /// Encoding written: protobuf or json.
    #[arg(long, value_enum, default_value_t = WireFormat::Protobuf)]
    pub format: WireFormat,
    /// Publish each line as it is (Content-Type: application/json), unvalidated.
    #[arg(long)]
    pub raw: bool,
    /// Publish the one event only if its subject's last message is at this
    /// stream sequence (0: the subject holds none).
    #[arg(long, value_name = "SEQ", conflicts_with = "expect_aggregate_version")]
    pub expect_last_seq: Option<u64>,
    /// Append as to an event store: each subject must hold exactly this many
    /// events before the input's first line for it, and each further line of
    /// that subject expects one more. Refused, exit 3, if another writer got
    /// there first.
    #[arg(long, value_name = "VERSION")]
    pub expect_aggregate_version: Option<u64>,
    /// File of JSON envelopes, one per line (default: standard input).
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    Protobuf,
    Json,
}

/// A publish that stopped at `line` (numbered from 1). What was stored
/// before it stays stored, and was printed.
#[derive(Debug, thiserror::Error)]
#[error(
    "line {line}: {failure}; {published} {} published before it{}",
    events(*published),
    stored_after_note(*stored_after)
)]
pub struct PublishError {
    pub line: usize,
    pub published: usize,
    /// Later lines, already sent in the same window, that were stored too.
    pub stored_after: usize,
    pub failure: PublishFailure,
}

impl PublishError {
    /// 3 for a conflict (another writer appended first), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.failure {
            PublishFailure::WrongLastSequence { .. } | PublishFailure::WrongVersion { .. } => 3,
            PublishFailure::NoStream { .. }
            | PublishFailure::Failed { .. }
            | PublishFailure::Read { .. } => 1,
        }
    }
}

fn events(count: usize) -> &'static str {
    if count == 1 { "event" } else { "events" }
}

fn stored_after_note(count: usize) -> String {
    match count {
        0 => String::new(),
        count => format!(" ({count} later, already sent, stored too)"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// JetStream answered "no responders": nothing would store the event.
    #[error("no stream captures subject {subject}")]
    NoStream { subject: String },
    /// The server refused the publish (10071): the subject's last message
    /// was not the expected one.
    #[error(
        "conflict on subject {subject}: expected last sequence {expected_seq}{}, found {}{}",
        version_note(*expected_version),
        or_unknown(*actual_seq),
        version_note(*actual_version)
    )]
    WrongLastSequence {
        subject: String,
        expected_seq: u64,
        /// Read after the refusal; `None` when that read failed.
        actual_seq: Option<u64>,
        expected_version: Option<u64>,
        actual_version: Option<u64>,
    },
    /// The subject held another number of events than expected; nothing was sent.
    #[error(
        "conflict on subject {subject}: expected version {expected_version}, found version {actual_version} (last sequence {actual_seq})"
    )]
    WrongVersion {
        subject: String,
        expected_version: u64,
        actual_version: u64,
        actual_seq: u64,
    },
    #[error("publish to {subject}: {source}")]
    Failed {
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error("cannot read subject {subject}: {source}")]
    Read {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
}

fn version_note(version: Option<u64>) -> String {
    version.map_or_else(String::new, |version| format!(" (version {version})"))
}

fn or_unknown(seq: Option<u64>) -> String {
    seq.map_or_else(|| "unknown".to_owned(), |seq| seq.to_string())
}

impl PublishFailure {
    /// A refused publish or ack that no expectation explains.
    fn of(subject: &str, source: jetstream::context::PublishError) -> Self {
        match source.kind() {
            PublishErrorKind::StreamNotFound => PublishFailure::NoStream {
                subject: subject.to_owned(),
            },
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::Other => PublishFailure::Failed {
                subject: subject.to_owned(),
                source,
            },
        }
    }

    fn read(subject: &str, source: impl Into<async_nats::Error>) -> Self {
        PublishFailure::Read {
            subject: subject.to_owned(),
            source: source.into(),
        }
    }
}

/// One input line, validated and encoded, ready to send.
struct Outgoing {
    line: usize,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Publishes the input; `out` receives one `<subject> seq <N>` line per
/// stored event as its ack arrives. Returns the closing summary.
pub async fn run(
    config: Config,
    args: PublishArgs,
    out: &mut impl FnMut(&str),
) -> Result<String, RunError> {
    let prepared = crate::prepare(config)?;
    // A stream stores only concrete subjects: a wildcard here is a mistake.
    let subject = Template::parse_subject(&args.subject)
        .map_err(|err| RunError::Usage(format!("--subject: {err}")))?;
    if args.raw && subject.has_placeholders() {
        return Err(RunError::Usage(format!(
            "--subject {:?}: --raw sends lines unread, so the subject cannot use placeholders",
            args.subject
        )));
    }
    let encoding = match args.format {
        WireFormat::Protobuf => Encoding::Protobuf,
        WireFormat::Json => Encoding::Json,
    };
    let mut outgoing = Vec::new();
    for (number, line) in read_lines(args.file.as_deref())? {
        let mut headers = HeaderMap::new();
        let (target, body) = if args.raw {
            headers.insert("Content-Type", CONTENT_TYPE_JSON);
            (args.subject.clone(), line.into_bytes())
        } else {
            let envelope = prepared
                .decoder
                .decode(Some(CONTENT_TYPE_JSON), line.as_bytes())
                .map_err(|err| RunError::Usage(format!("line {number}: {err}")))?;
            let target = subject
                .render_subject(&envelope, "")
                .map_err(|err| RunError::Usage(format!("line {number}: {err}")))?;
            headers.insert("Content-Type", encoding.content_type());
            headers.insert("Nats-Msg-Id", envelope.event_id.as_str());
            let body = envelope
                .encode(encoding)
                .map_err(|err| RunError::Usage(format!("line {number}: {err}")))?;
            (target, body)
        };
        outgoing.push(Outgoing {
            line: number,
            subject: target,
            headers,
            body: body.into(),
        });
    }
    if args.expect_last_seq.is_some() && outgoing.len() != 1 {
        return Err(RunError::Usage(format!(
            "--expect-last-seq applies to exactly one event; the input has {}",
            outgoing.len()
        )));
    }

    let client = nats::connect(&prepared.config.nats, Arc::new(Readiness::default())).await?;
    let mut publisher = Publisher {
        jetstream: jetstream::new(client),
        out,
        published: 0,
        duplicates: 0,
    };
    match (args.expect_last_seq, args.expect_aggregate_version) {
        (Some(expected_seq), _) => {
            for message in outgoing {
                publisher.fenced(message, expected_seq).await?;
            }
        }
        (None, Some(version)) => publisher.append(outgoing, version).await?,
        (None, None) => publisher.pipelined(outgoing).await?,
    }
    let duplicates = match publisher.duplicates {
        0 => String::new(),
        count => format!(" ({count} already stored: duplicate event ids)"),
    };
    Ok(format!(
        "published {} {}{duplicates}\n",
        publisher.published,
        events(publisher.published)
    ))
}

/// Sent in windows: async-nats holds at most 5,000 acks in flight.
const WINDOW: usize = 1_000;

struct Publisher<'out, Out> {
    jetstream: jetstream::Context,
    out: &'out mut Out,
    /// Events stored so far (duplicates included: they are in the stream).
    published: usize,
    duplicates: usize,
}

/// A sent publish awaiting its ack.
struct InFlight {
    line: usize,
    subject: String,
    ack: PublishAckFuture,
}

/// Where the next append to a subject stands: the version it must have and
/// the sequence its last message must be at.
#[derive(Debug, Clone, Copy)]
struct Head {
    version: u64,
    last_seq: u64,
}

impl<Out: FnMut(&str)> Publisher<'_, Out> {
    fn stored(&mut self, subject: &str, ack: &PublishAck) {
        self.published += 1;
        let duplicate = if ack.duplicate {
            self.duplicates += 1;
            " duplicate"
        } else {
            ""
        };
        (self.out)(&format!("{subject} seq {}{duplicate}\n", ack.sequence));
    }

    fn stop(&self, line: usize, failure: PublishFailure) -> PublishError {
        PublishError {
            line,
            published: self.published,
            stored_after: 0,
            failure,
        }
    }

    async fn pipelined(&mut self, outgoing: Vec<Outgoing>) -> Result<(), PublishError> {
        let mut window = Vec::with_capacity(WINDOW);
        for message in outgoing {
            let sent = self
                .jetstream
                .publish_with_headers(message.subject.clone(), message.headers, message.body)
                .await;
            match sent {
                Ok(ack) => window.push(InFlight {
                    line: message.line,
                    subject: message.subject,
                    ack,
                }),
                Err(source) => {
                    // What is in flight is counted before this line's failure.
                    self.settle(&mut window).await?;
                    return Err(
                        self.stop(message.line, PublishFailure::of(&message.subject, source))
                    );
                }
            }
            if window.len() == WINDOW {
                self.settle(&mut window).await?;
            }
        }
        self.settle(&mut window).await
    }

    /// Awaits every ack of the window, also after a failure, so the count of
    /// stored events is exact; returns the first failure.
    async fn settle(&mut self, window: &mut Vec<InFlight>) -> Result<(), PublishError> {
        let mut first_failure = None;
        let mut stored_after = 0;
        for sent in window.drain(..) {
            match sent.ack.await {
                Ok(ack) => {
                    self.stored(&sent.subject, &ack);
                    if first_failure.is_some() {
                        stored_after += 1;
                    }
                }
                Err(source) => {
                    if first_failure.is_none() {
                        first_failure =
                            Some((sent.line, PublishFailure::of(&sent.subject, source)));
                    }
                }
            }
        }
        match first_failure {
            None => Ok(()),
            Some((line, failure)) => Err(PublishError {
                line,
                published: self.published - stored_after,
                stored_after,
                failure,
            }),
        }
    }

    /// Publishes one event that the server stores only if its subject's
    /// last message is at `expected_seq`.
    async fn fenced(&mut self, message: Outgoing, expected_seq: u64) -> Result<(), PublishError> {
        let line = message.line;
        let subject = message.subject.clone();
        match self.send_fenced(message, expected_seq).await {
            Ok(ack) => {
                self.stored(&subject, &ack);
                Ok(())
            }
            Err(source) if source.kind() == PublishErrorKind::WrongLastSequence => {
                let actual = subject_state(&self.jetstream, &subject).await.ok();
                Err(self.stop(
                    line,
                    PublishFailure::WrongLastSequence {
                        subject,
                        expected_seq,
                        actual_seq: actual.map(|state| state.last_seq),
                        expected_version: None,
                        actual_version: None,
                    },
                ))
            }
            Err(source) => Err(self.stop(line, PublishFailure::of(&subject, source))),
        }
    }

    async fn send_fenced(
        &self,
        mut message: Outgoing,
        expected_seq: u64,
    ) -> Result<PublishAck, jetstream::context::PublishError> {
        message.headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected_seq),
        );
        self.jetstream
            .publish_with_headers(message.subject, message.headers, message.body)
            .await?
            .await
    }

    /// Event-store appends: the first line of each subject expects the
    /// subject to hold `version` events, each later line one more. The count
    /// is read once per subject; every publish is fenced on the subject's
    /// last sequence, so an append by another writer after the read is
    /// refused by the server rather than miscounted.
    async fn append(&mut self, outgoing: Vec<Outgoing>, version: u64) -> Result<(), PublishError> {
        let mut heads: HashMap<String, Head> = HashMap::new();
        for message in outgoing {
            let line = message.line;
            let subject = message.subject.clone();
            let head = match heads.get(&subject) {
                Some(head) => *head,
                None => {
                    let state = subject_state(&self.jetstream, &subject)
                        .await
                        .map_err(|failure| self.stop(line, failure))?;
                    if state.count != version {
                        return Err(self.stop(
                            line,
                            PublishFailure::WrongVersion {
                                subject,
                                expected_version: version,
                                actual_version: state.count,
                                actual_seq: state.last_seq,
                            },
                        ));
                    }
                    Head {
                        version,
                        last_seq: state.last_seq,
                    }
                }
            };
            match self.send_fenced(message, head.last_seq).await {
                Ok(ack) => {
                    self.stored(&subject, &ack);
                    // A duplicate event id is not stored again: the subject
                    // did not move.
                    if !ack.duplicate {
                        heads.insert(
                            subject,
                            Head {
                                version: head.version + 1,
                                last_seq: ack.sequence,
                            },
                        );
                    }
                }
                Err(source) if source.kind() == PublishErrorKind::WrongLastSequence => {
                    let actual = subject_state(&self.jetstream, &subject).await.ok();
                    return Err(self.stop(
                        line,
                        PublishFailure::WrongLastSequence {
                            subject,
                            expected_seq: head.last_seq,
                            actual_seq: actual.as_ref().map(|state| state.last_seq),
                            expected_version: Some(head.version),
                            actual_version: actual.map(|state| state.count),
                        },
                    ));
                }
                Err(source) => return Err(self.stop(line, PublishFailure::of(&subject, source))),
            }
        }
        Ok(())
    }
}

/// What a subject holds now.
#[derive(Debug, Clone, Copy)]
struct SubjectState {
    /// The stream sequence of its last message; 0 when it holds none.
    last_seq: u64,
    /// How many messages it holds: the aggregate's version.
    count: u64,
}

async fn subject_state(
    jetstream: &jetstream::Context,
    subject: &str,
) -> Result<SubjectState, PublishFailure> {
    let stream_name =
        jetstream
            .stream_by_subject(subject)
            .await
            .map_err(|err| match err.kind() {
                GetStreamByNameErrorKind::NotFound => PublishFailure::NoStream {
                    subject: subject.to_owned(),
                },
                GetStreamByNameErrorKind::Request
                | GetStreamByNameErrorKind::InvalidSubject
                | GetStreamByNameErrorKind::JetStream(_) => PublishFailure::read(subject, err),
            })?;
    let stream = jetstream
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|err| PublishFailure::read(subject, err))?;
    // The last sequence before the count: an append between the two reads
    // then shows in the count (a conflict), or moves the last sequence so
    // that the publish fenced on it is refused. Read the other way round,
    // such an append would go unseen.
    let last_seq = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => message.sequence,
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
        Err(err) => return Err(PublishFailure::read(subject, err)),
    };
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(|err| PublishFailure::read(subject, err))?;
    let mut count = 0;
    while let Some((name, messages)) = subjects
        .try_next()
        .await
        .map_err(|err| PublishFailure::read(subject, err))?
    {
        if name == subject {
            count = u64::try_from(messages).unwrap_or(u64::MAX);
        }
    }
    Ok(SubjectState { last_seq, count })
}

/// The input's lines that are not blank, each with its number in the
/// input (from 1), so that messages name the line an editor shows.
fn read_lines(file: Option<&std::path::Path>) -> Result<Vec<(usize, String)>, RunError> {
    let read_error = |err: std::io::Error| RunError::Usage(format!("cannot read input: {err}"));
    let lines: Vec<String> = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(read_error)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .map_err(read_error)?,
    };
    Ok(lines
        .into_iter()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| (index + 1, line))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(published: usize, stored_after: usize, failure: PublishFailure) -> PublishError {
        PublishError {
            line: 3,
            published,
            stored_after,
            failure,
        }
    }

    /// Each failure says where the input stopped and what was stored; only
    /// a conflict exits 3.
    #[test]
    fn a_failure_names_the_line_the_subject_and_what_was_stored() {
        let cases = [
            (
                stopped(
                    2,
                    1,
                    PublishFailure::NoStream {
                        subject: "pn.o-3".to_owned(),
                    },
                ),
                "line 3: no stream captures subject pn.o-3; 2 events published before it \
                 (1 later, already sent, stored too)",
                1,
            ),
            (
                stopped(
                    1,
                    0,
                    PublishFailure::WrongLastSequence {
                        subject: "orders.a1".to_owned(),
                        expected_seq: 4,
                        actual_seq: Some(7),
                        expected_version: Some(2),
                        actual_version: Some(3),
                    },
                ),
                "line 3: conflict on subject orders.a1: expected last sequence 4 (version 2), \
                 found 7 (version 3); 1 event published before it",
                3,
            ),
            (
                stopped(
                    0,
                    0,
                    PublishFailure::WrongLastSequence {
                        subject: "orders.a1".to_owned(),
                        expected_seq: 4,
                        actual_seq: None,
                        expected_version: None,
                        actual_version: None,
                    },
                ),
                "line 3: conflict on subject orders.a1: expected last sequence 4, found unknown; \
                 0 events published before it",
                3,
            ),
            (
                stopped(
                    0,
                    0,
                    PublishFailure::WrongVersion {
                        subject: "orders.a1".to_owned(),
                        expected_version: 1,
                        actual_version: 2,
                        actual_seq: 9,
                    },
                ),
                "line 3: conflict on subject orders.a1: expected version 1, found version 2 \
                 (last sequence 9); 0 events published before it",
                3,
            ),
        ];
        for (error, message, code) in cases {
            assert_eq!(error.to_string(), message);
            assert_eq!(error.exit_code(), code, "{message}");
            assert_eq!(RunError::from(error).exit_code(), code, "{message}");
        }
    }
}
