//! `jetline project`: applies one sink's rules to JSON envelopes, one per
//! line, without any server, and says what the sink would write: a KV
//! sink's documents, a PostgreSQL sink's statements with their typed
//! parameters, a webhook's requests, a JetStream sink's messages. Teams put
//! their projection rules under test with it, as `jetline upcast` tests
//! chains.
//!
//! Each line goes the way the consumer loop takes an event: decoded and
//! validated by the decoder, routed by the sink's routes, upcast to the
//! sink's version, then turned into the write by the sink's own functions
//! (`kv::document::Rules`, `postgres::sql::Plans`,
//! `http::sink::request_headers`, `jetstream::Publication`). The first line
//! that would be dead-lettered ends the command with its number and reason.
//! An event's `source_seq` is its line number.
//!
//! **Invariant:** no secret is read: the values of `headers_env` and
//! `url_env` are never looked up, and show as `***`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::ConfigArg;
use crate::{
    Config, Prepared, RunError,
    config::{SinkKind, SinkSpec},
    dead_letter::DeadLetterReason,
    envelope::{CONTENT_TYPE_JSON, Encoding, Envelope},
    outcome::{self, Outcome},
    route::Router,
    sink::{
        Event, SinkError,
        http::{self, config::check_url},
        jetstream::Publication,
        kv::document::{Change, RECORD_FIELD, Rules},
        postgres::sql::{Plans, SqlValue},
        value::{Position, timestamp_rfc3339},
    },
    source::Delivery,
    template::{Template, TemplateError, is_valid_subject, subject_matches},
};

#[derive(Debug, clap::Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The sink whose rules are applied.
    #[arg(long)]
    pub sink: String,
    /// A KV sink's documents before the first event: a JSON object of
    /// documents keyed by KV key (null: deleted). Default: none.
    #[arg(long, value_name = "FILE")]
    pub state: Option<std::path::PathBuf>,
    /// The subject each event was published on, a template as for
    /// `publish` (`orders.{aggregate_id}`). Default: the first subject of
    /// the sink's sources that has no wildcard.
    #[arg(long)]
    pub subject: Option<String>,
    /// Output: text to read, or one JSON value to compare.
    #[arg(long, value_enum, default_value_t = ProjectFormat::Text)]
    pub format: ProjectFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProjectFormat {
    Text,
    Json,
}

/// What a secret's value shows as.
const MASK: &str = "***";

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The command cannot run as asked: the configuration, a flag, `--state`.
    #[error(transparent)]
    Usage(#[from] RunError),
    /// `run` would dead-letter the event of line `line`.
    #[error("line {line}: {}: {error}", reason.as_str())]
    DeadLetter {
        line: usize,
        reason: DeadLetterReason,
        error: String,
    },
    /// The event of line `line` cannot be given its `--subject`.
    #[error("line {line}: --subject: {error}")]
    Subject { line: usize, error: TemplateError },
}

impl ProjectError {
    /// 2 when the command cannot run as asked, 1 when a line fails.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProjectError::Usage(error) => error.exit_code(),
            ProjectError::DeadLetter { .. } | ProjectError::Subject { .. } => 1,
        }
    }
}

/// Why a line changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No consumer of the sink is filtered to the event's subject.
    NotRead { subject: String },
    /// The consumer reads the subject, but no route sends this event type.
    NotRouted { subject: String },
    /// The sink has no rule (KV) or statement (PostgreSQL) for the type.
    NoRule,
    /// The KV document records this event, or a later one, as applied.
    AlreadyApplied { key: String },
}

impl Skip {
    pub fn as_str(&self) -> &'static str {
        match self {
            Skip::NotRead { .. } => "not_read",
            Skip::NotRouted { .. } => "not_routed",
            Skip::NoRule => "no_rule",
            Skip::AlreadyApplied { .. } => "already_applied",
        }
    }

    fn explain(&self, sink: &str, event_type: &str) -> String {
        match self {
            Skip::NotRead { subject } => format!("no consumer of sink {sink} reads {subject}"),
            Skip::NotRouted { subject } => {
                format!("no route to sink {sink} takes {event_type} on {subject}")
            }
            Skip::NoRule => format!("sink {sink} has no rule for {event_type}"),
            Skip::AlreadyApplied { key } => format!("document {key} records it as applied"),
        }
    }
}

/// What the sink writes for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A KV key written (`deleted`: a delete marker).
    Document { key: String, deleted: bool },
    /// A PostgreSQL statement with each parameter's SQL type and value.
    Statement {
        sql: String,
        params: Vec<(String, Value)>,
    },
    /// A webhook request; secret header values are `***`.
    Request {
        method: String,
        url: String,
        headers: BTreeMap<String, String>,
        body: Value,
    },
    /// A JetStream message, with the envelope it holds as JSON.
    Message {
        subject: String,
        headers: BTreeMap<String, String>,
        message: Value,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub number: usize,
    /// Empty when the envelope could not be read that far.
    pub event_type: String,
    pub result: Result<Write, Skip>,
}

/// A KV key's stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Document(Map<String, Value>),
    /// A delete marker, with the record of applied sequences it keeps.
    Deleted(Map<String, Value>),
}

/// The sink kinds `project` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kv,
    Postgres,
    Http,
    JetStream,
}

/// Every line's effect, and a KV sink's documents after the last one.
#[derive(Debug, Clone)]
pub struct Projection {
    pub sink: String,
    pub kind: Kind,
    pub lines: Vec<Line>,
    pub documents: BTreeMap<String, Stored>,
}

/// Applies sink `args.sink` to each JSON envelope of `input`, starting
/// from the KV documents in `state`.
pub fn project(
    prepared: &Prepared,
    args: &ProjectArgs,
    state: Option<&[u8]>,
    input: &[u8],
) -> Result<Projection, ProjectError> {
    let config = &prepared.config;
    let Some(sink) = config.sinks.get(&args.sink) else {
        return Err(super::dlq::no_such_sink(config, "--sink", &args.sink, "").into());
    };
    let readers = readers(config, &args.sink);
    if readers.is_empty() {
        return Err(RunError::Usage(format!("no route sends events to sink {}", args.sink)).into());
    }
    let subject = event_subject(config, &args.sink, args.subject.as_deref())?;
    let (writes, kind) = Writes::new(prepared, sink)?;
    let documents = match (state, kind) {
        (None, _) => BTreeMap::new(),
        (Some(state), Kind::Kv) => read_state(state)?,
        (Some(_), _) => {
            return Err(RunError::Usage(format!(
                "--state holds KV documents; sink {} is a {} sink",
                args.sink,
                sink.kind.type_name()
            ))
            .into());
        }
    };
    let mut projector = Projector {
        prepared,
        sink,
        readers,
        subject,
        writes,
        documents,
    };
    let mut lines = Vec::new();
    for (index, text) in input.split(|byte| *byte == b'\n').enumerate() {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines.push(projector.line(index + 1, text)?);
    }
    Ok(Projection {
        sink: args.sink.clone(),
        kind,
        lines,
        documents: projector.documents,
    })
}

/// One consumer of the sink: the stream, what it is filtered to, its routes.
struct Reader {
    stream: String,
    filter_subjects: Vec<String>,
    router: Router,
}

/// The sink's consumers, one per source (partitions share their routes).
fn readers(config: &Config, sink: &str) -> Vec<Reader> {
    config
        .pipelines
        .iter()
        .filter(|pipeline| pipeline.sink == sink && pipeline.partition.index == 0)
        .map(|pipeline| Reader {
            stream: pipeline.stream.clone(),
            filter_subjects: pipeline.filter_subjects.clone(),
            router: Router::new(pipeline.routes.iter().map(|&index| &config.routes[index])),
        })
        .collect()
}

/// `--subject`, or the first subject without wildcards of the sources
/// feeding `sink`: the subject each event is taken to arrive on.
fn event_subject(config: &Config, sink: &str, given: Option<&str>) -> Result<Template, RunError> {
    if let Some(given) = given {
        return Template::parse_subject(given)
            .map_err(|err| RunError::Usage(format!("--subject: {err}")));
    }
    let mut read = Vec::new();
    let pipelines = config.pipelines.iter();
    for pipeline in pipelines.filter(|p| p.sink == sink && p.partition.index == 0) {
        let Some(source) = config.sources.get(&pipeline.source) else {
            continue;
        };
        if let Some(literal) = source.subjects.iter().find(|s| is_valid_subject(s)) {
            return Template::parse_subject(literal)
                .map_err(|err| RunError::Usage(format!("sources.{}: {err}", pipeline.source)));
        }
        read.extend(source.subjects.iter().map(String::as_str));
    }
    let read = if read.is_empty() {
        "their whole streams".to_owned()
    } else {
        read.join(", ")
    };
    Err(RunError::Usage(format!(
        "the sources of sink {sink} read {read}: no subject without wildcards to take; \
         give the events' subject with --subject (a template such as 'orders.{{aggregate_id}}')"
    )))
}

/// A KV state file: documents keyed by key, each an object or null.
fn read_state(state: &[u8]) -> Result<BTreeMap<String, Stored>, RunError> {
    let invalid = |message: String| RunError::Usage(format!("--state: {message}"));
    let Value::Object(entries) = crate::strict_json::parse(state).map_err(invalid)? else {
        return Err(invalid(
            "not a JSON object of documents keyed by KV key".into(),
        ));
    };
    let mut documents = BTreeMap::new();
    for (key, value) in entries {
        // Events here are numbered by line, not by the source stream: a
        // record copied from a bucket would make them look applied already.
        let stored = match value {
            Value::Object(mut document) => {
                document.remove(RECORD_FIELD);
                Stored::Document(document)
            }
            Value::Null => Stored::Deleted(Map::new()),
            _ => return Err(invalid(format!("key {key}: not a JSON object or null"))),
        };
        documents.insert(key, stored);
    }
    Ok(documents)
}

/// How the sink turns an event into its write.
enum Writes {
    Kv(Rules),
    Postgres(Plans),
    Http {
        url: String,
        headers: reqwest::header::HeaderMap,
    },
    JetStream(Publication),
}

impl Writes {
    fn new(prepared: &Prepared, sink: &SinkSpec) -> Result<(Self, Kind), RunError> {
        let name = &sink.name;
        let setup = |error: SinkError| RunError::Usage(format!("sinks.{name}: {error}"));
        Ok(match &sink.kind {
            SinkKind::Kv(config) => (Writes::Kv(Rules::new(config).map_err(setup)?), Kind::Kv),
            SinkKind::Postgres(config) => {
                let registry = prepared.decoder.registry();
                let plans =
                    Plans::new(name, config, registry, sink.schema_version).map_err(setup)?;
                (Writes::Postgres(plans), Kind::Postgres)
            }
            SinkKind::Http(config) => {
                // The variables are not read: a secret shows as `***`.
                let headers =
                    http::sink::configured_headers(name, config, |_| Some(MASK.to_owned()))
                        .map_err(setup)?;
                let url = match &config.url {
                    Some(url) => check_url(url)
                        .map_err(|message| setup(SinkError::Setup(message)))?
                        .to_string(),
                    None => MASK.to_owned(),
                };
                (Writes::Http { url, headers }, Kind::Http)
            }
            SinkKind::JetStream(config) => (
                Writes::JetStream(Publication::new(config).map_err(setup)?),
                Kind::JetStream,
            ),
            SinkKind::Custom => {
                return Err(RunError::Usage(format!(
                    "sink {name} is a custom sink: its code is in the program that registers \
                     it, not in this binary"
                )));
            }
        })
    }
}

struct Projector<'a> {
    prepared: &'a Prepared,
    sink: &'a SinkSpec,
    readers: Vec<Reader>,
    subject: Template,
    writes: Writes,
    documents: BTreeMap<String, Stored>,
}

impl Projector<'_> {
    /// The consumer of the sink that `subject` is delivered to.
    fn reader(&self, subject: &str) -> Option<&Reader> {
        self.readers.iter().find(|reader| {
            reader.filter_subjects.is_empty()
                || reader
                    .filter_subjects
                    .iter()
                    .any(|pattern| subject_matches(pattern, subject))
        })
    }

    fn line(&mut self, number: usize, text: &[u8]) -> Result<Line, ProjectError> {
        let skipped = |event_type: &str, skip| Line {
            number,
            event_type: event_type.to_owned(),
            result: Err(skip),
        };
        let envelope = match self.prepared.decoder.decode(Some(CONTENT_TYPE_JSON), text) {
            Ok(envelope) => envelope,
            Err(error) => {
                // A subject rendered from the envelope's fields is unknown
                // here: the event counts as read and wanted.
                if !self.subject.has_placeholders() {
                    let subject = self.subject.to_string();
                    let event_type = error.event_type();
                    match self.reader(&subject) {
                        None => {
                            return Ok(skipped(
                                event_type.unwrap_or_default(),
                                Skip::NotRead { subject },
                            ));
                        }
                        Some(reader) if !reader.router.wants_undecoded(&subject, event_type) => {
                            return Ok(skipped(
                                event_type.unwrap_or_default(),
                                Skip::NotRouted { subject },
                            ));
                        }
                        Some(_) => {}
                    }
                }
                return Err(ProjectError::DeadLetter {
                    line: number,
                    reason: error.reason(),
                    error: error.to_string(),
                });
            }
        };
        let subject = self
            .subject
            .render_subject(&envelope, "")
            .map_err(|error| ProjectError::Subject {
                line: number,
                error,
            })?;
        let Some(reader) = self.reader(&subject) else {
            return Ok(skipped(&envelope.event_type, Skip::NotRead { subject }));
        };
        if !reader.router.wants(&subject, &envelope.event_type) {
            return Ok(skipped(&envelope.event_type, Skip::NotRouted { subject }));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", CONTENT_TYPE_JSON);
        let delivery = Delivery::detached(
            &reader.stream,
            subject,
            headers,
            Bytes::copy_from_slice(text),
            number as u64,
        );
        let mut event = Event {
            envelope,
            delivery,
            original: Some(Encoding::Json),
            trace: None,
        };
        match self
            .prepared
            .upcasters
            .upcast(&mut event.envelope, self.sink.schema_version)
        {
            Ok(Some(_)) => event.original = None,
            Ok(None) => {}
            Err(error) => {
                return Err(ProjectError::DeadLetter {
                    line: number,
                    reason: DeadLetterReason::UpcastFailed,
                    error: error.to_string(),
                });
            }
        }
        let result = self.write(&event);
        let event_type = event.envelope.event_type;
        match result {
            Ok(result) => Ok(Line {
                number,
                event_type,
                result,
            }),
            Err(error) => Err(self.dead_letter(number, error)),
        }
    }

    /// What `run` makes of a failed write: every attempt here is the last.
    fn dead_letter(&self, line: usize, error: SinkError) -> ProjectError {
        let settings = &self.sink.consumer;
        let failed = Err(error);
        let outcome = outcome::decide(
            &failed,
            settings.retry.max_attempts,
            &settings.retry,
            settings.ack_wait,
        );
        let (reason, error) = match outcome {
            Outcome::DeadLetter { reason, error } => (reason, error),
            // Not for a failure at the last attempt.
            Outcome::Applied | Outcome::Skipped | Outcome::Retry { .. } => (
                DeadLetterReason::MaxAttempts,
                failed
                    .err()
                    .map(|error| error.to_string())
                    .unwrap_or_default(),
            ),
        };
        ProjectError::DeadLetter {
            line,
            reason,
            error,
        }
    }

    /// The sink's write for `event`, computed by the sink's own functions.
    fn write(&mut self, event: &Event) -> Result<Result<Write, Skip>, SinkError> {
        let written = match &self.writes {
            Writes::Kv(rules) => {
                let Some((rule, key)) = rules.target(event)? else {
                    return Ok(Err(Skip::NoRule));
                };
                // A delete marker reads as the record it keeps, as in the bucket.
                let document = match self.documents.get(&key) {
                    Some(Stored::Document(document) | Stored::Deleted(document)) => {
                        document.clone()
                    }
                    None => Map::new(),
                };
                let position = Position::of(event);
                let change =
                    rule.change(document, &self.sink.name, &key, &event.envelope, position)?;
                let (stored, deleted) = match change {
                    Change::AlreadyApplied(_) => return Ok(Err(Skip::AlreadyApplied { key })),
                    Change::Put(document) => (Stored::Document(document), false),
                    Change::Delete(record) => (Stored::Deleted(record), true),
                };
                self.documents.insert(key.clone(), stored);
                Write::Document { key, deleted }
            }
            Writes::Postgres(plans) => {
                let Some((index, params)) = plans.bind(event)? else {
                    return Ok(Err(Skip::NoRule));
                };
                let Some(statement) = plans.statements().get(index) else {
                    return Ok(Err(Skip::NoRule));
                };
                Write::Statement {
                    sql: statement.sql.clone(),
                    params: statement
                        .types
                        .iter()
                        .zip(&params)
                        .map(|(sql_type, value)| (sql_type.name().to_owned(), sql_json(value)))
                        .collect(),
                }
            }
            Writes::Http { url, headers } => {
                let request = http::sink::request_headers(headers, event)?;
                Write::Request {
                    method: http::sink::METHOD.to_string(),
                    url: url.clone(),
                    headers: request
                        .iter()
                        .map(|(name, value)| {
                            // `headers_env` values, the only way to send
                            // credentials, are the sensitive ones.
                            let shown = if value.is_sensitive() {
                                MASK.to_owned()
                            } else {
                                String::from_utf8_lossy(value.as_bytes()).into_owned()
                            };
                            (name.as_str().to_owned(), shown)
                        })
                        .collect(),
                    body: event.envelope.to_json()?,
                }
            }
            Writes::JetStream(publication) => {
                let subject = publication.subject(event)?;
                let body = publication.body(event)?;
                Write::Message {
                    subject,
                    headers: publication
                        .headers(event)
                        .iter()
                        .map(|(name, values)| {
                            let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                            (name.to_string(), values.join(", "))
                        })
                        .collect(),
                    message: message_json(publication.encoding(), &body, &event.envelope),
                }
            }
        };
        Ok(Ok(written))
    }
}

/// A published envelope as JSON: a JSON body as it is sent; a binary one
/// as its envelope (or, for a value the JSON mapping cannot express, which
/// the binary form passes on, the reason it shows none).
fn message_json(encoding: Encoding, body: &[u8], envelope: &Envelope) -> Value {
    match encoding {
        Encoding::Json => serde_json::from_slice(body).unwrap_or_default(),
        Encoding::Protobuf => envelope
            .to_json()
            .unwrap_or_else(|error| Value::String(error.to_string())),
    }
}

/// A statement parameter as JSON: timestamps in RFC 3339, bytes in base64,
/// as the read-model sinks take them from events.
fn sql_json(value: &SqlValue) -> Value {
    use base64::Engine as _;
    let float =
        |number: f64| serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number);
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Bool(v) => Value::Bool(*v),
        SqlValue::Int4(v) => Value::from(*v),
        SqlValue::Int8(v) => Value::from(*v),
        SqlValue::Float4(v) => float(f64::from(*v)),
        SqlValue::Float8(v) => float(*v),
        SqlValue::Text(v) => Value::String(v.clone()),
        SqlValue::Bytes(v) => Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
        SqlValue::Timestamp(v) => {
            timestamp_rfc3339(&prost_types::Timestamp::from(*v)).map_or(Value::Null, Value::String)
        }
        SqlValue::Json(v) => v.clone(),
    }
}

impl Projection {
    /// The lines that changed nothing, with why.
    fn skipped(&self) -> Vec<Value> {
        self.lines
            .iter()
            .filter_map(|line| {
                let skip = line.result.as_ref().err()?;
                Some(json!({ "line": line.number, "event_type": line.event_type, "reason": skip.as_str() }))
            })
            .collect()
    }

    /// The documents as readers see them: without the sink's record of
    /// applied sequences; a deleted key is null.
    fn documents_json(&self) -> Map<String, Value> {
        self.documents
            .iter()
            .map(|(key, stored)| {
                let value = match stored {
                    Stored::Document(document) => {
                        let mut document = document.clone();
                        document.remove(RECORD_FIELD);
                        Value::Object(document)
                    }
                    Stored::Deleted(_) => Value::Null,
                };
                (key.clone(), value)
            })
            .collect()
    }

    /// One JSON value for a test or a CI script to compare.
    pub fn json(&self) -> Value {
        let writes: Vec<Value> = self
            .lines
            .iter()
            .filter_map(|line| {
                let mut value = match line.result.as_ref().ok()? {
                    Write::Document { .. } => return None,
                    Write::Statement { sql, params } => json!({
                        "statement": sql,
                        "params": params
                            .iter()
                            .map(|(sql_type, value)| json!({ "type": sql_type, "value": value }))
                            .collect::<Vec<_>>(),
                    }),
                    Write::Request {
                        method,
                        url,
                        headers,
                        body,
                    } => json!({ "method": method, "url": url, "headers": headers, "body": body }),
                    Write::Message {
                        subject,
                        headers,
                        message,
                    } => json!({ "subject": subject, "headers": headers, "message": message }),
                };
                value["line"] = json!(line.number);
                Some(value)
            })
            .collect();
        let (field, written) = match self.kind {
            Kind::Kv => ("documents", Value::Object(self.documents_json())),
            Kind::Postgres => ("statements", Value::Array(writes)),
            Kind::Http => ("requests", Value::Array(writes)),
            Kind::JetStream => ("messages", Value::Array(writes)),
        };
        json!({ field: written, "skipped": self.skipped() })
    }

    /// The same facts as [`Projection::json`], for reading.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let compact = |value: &Value| serde_json::to_string(value).unwrap_or_default();
        for line in &self.lines {
            let number = line.number;
            let _ = match &line.result {
                Err(skip) => writeln!(
                    out,
                    "line {number}: skipped ({}): {}",
                    skip.as_str(),
                    skip.explain(&self.sink, &line.event_type)
                ),
                Ok(Write::Document { key, deleted }) => {
                    let done = if *deleted { "deleted" } else { "written" };
                    writeln!(out, "line {number}: {key} {done}")
                }
                Ok(Write::Statement { sql, params }) => {
                    let _ = writeln!(out, "line {number}: {sql}");
                    for (index, (sql_type, value)) in params.iter().enumerate() {
                        let _ = writeln!(out, "  ${} {sql_type} {}", index + 1, compact(value));
                    }
                    Ok(())
                }
                Ok(Write::Request {
                    method,
                    url,
                    headers,
                    body,
                }) => {
                    let first = format!("line {number}: {method} {url}");
                    write_block(&mut out, &first, headers, ("body", body))
                }
                Ok(Write::Message {
                    subject,
                    headers,
                    message,
                }) => {
                    let first = format!("line {number}: {subject}");
                    write_block(&mut out, &first, headers, ("message", message))
                }
            };
        }
        if self.kind == Kind::Kv {
            let _ = writeln!(out, "documents:");
            for (key, document) in self.documents_json() {
                let _ = match document {
                    Value::Null => writeln!(out, "  {key} deleted"),
                    document => writeln!(out, "  {key} {}", compact(&document)),
                };
            }
        }
        let skipped = self
            .lines
            .iter()
            .filter(|line| line.result.is_err())
            .count();
        let _ = writeln!(
            out,
            "sink {}: {} events, {} applied, {skipped} skipped",
            self.sink,
            self.lines.len(),
            self.lines.len() - skipped
        );
        out
    }
}

/// A request or a message: its first line, its headers, what it carries.
fn write_block(
    out: &mut String,
    first: &str,
    headers: &BTreeMap<String, String>,
    (label, value): (&str, &Value),
) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(out, "{first}")?;
    for (name, header) in headers {
        writeln!(out, "  {name}: {header}")?;
    }
    let compact = serde_json::to_string(value).unwrap_or_default();
    writeln!(out, "  {label}: {compact}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    /// The example configuration's schemas and upcasters, with `sinks`
    /// fed by one route from a source reading `subjects`.
    fn prepared(sinks: &str, subjects: &str) -> Prepared {
        let yaml = format!(
            "nats: {{ url: 'nats://127.0.0.1:4222' }}\n\
             schemas: {{ dir: '{}/../schemas' }}\n\
             sources:\n  orders: {{ stream: ORDERS, subjects: {subjects} }}\n\
             routes:\n  - {{ name: all, from: orders, match: {{ event_types: [orders.OrderCreated] }}, to: [s] }}\n\
             sinks:\n  s: {sinks}\n",
            env!("CARGO_MANIFEST_DIR")
        );
        crate::prepare(load_str(&yaml).expect("valid configuration")).expect("prepared")
    }

    fn args(subject: Option<&str>) -> ProjectArgs {
        ProjectArgs {
            config: ConfigArg {
                config: "unused.yaml".into(),
            },
            sink: "s".into(),
            state: None,
            subject: subject.map(str::to_owned),
            format: ProjectFormat::Json,
        }
    }

    fn created(event_id: &str, aggregate_id: &str, cents: &str) -> String {
        json!({
            "eventId": event_id, "eventType": "orders.OrderCreated", "schemaVersion": 3,
            "aggregateId": aggregate_id, "occurredAt": "2026-11-23T10:00:00Z",
            "payload": { "orderId": aggregate_id, "customerId": "c-1", "totalAmountCents": cents, "currency": "EUR" },
        })
        .to_string()
    }

    const KV: &str = "{ type: kv, bucket: B, on: { orders.OrderCreated: { set: { cents: payload.total_amount_cents, seq: source_seq } } } }";

    #[test]
    fn the_subject_is_the_flag_or_a_literal_source_subject() {
        let input = format!("{}\n", created("e-1", "o-1", "5"));
        let with_literal = prepared(KV, "['orders.all', 'orders.>']");
        let projection =
            project(&with_literal, &args(None), None, input.as_bytes()).expect("projected");
        assert_eq!(projection.documents_json()["o-1"]["cents"], 5);

        let wildcards = prepared(KV, "['orders.>']");
        let error = project(&wildcards, &args(None), None, input.as_bytes())
            .expect_err("no subject to take");
        assert_eq!(error.exit_code(), 2, "{error}");
        assert!(error.to_string().contains("--subject"), "{error}");

        let projection = project(
            &wildcards,
            &args(Some("orders.{aggregate_id}")),
            None,
            input.as_bytes(),
        )
        .expect("projected");
        assert!(projection.lines[0].result.is_ok());
        let projection =
            project(&wildcards, &args(Some("other.x")), None, input.as_bytes()).expect("projected");
        assert_eq!(
            projection.lines[0].result,
            Err(Skip::NotRead {
                subject: "other.x".into()
            })
        );
    }

    #[test]
    fn lines_are_numbered_as_in_the_file_and_the_first_failure_stops() {
        let prepared = prepared(KV, "['orders.all']");
        let input = format!(
            "{}\n\n{}\r\n{}\nnot json\n{}\n",
            created("e-1", "o-1", "5"),
            created("e-2", "o-1", "7"),
            created("e-3", "o.2", "1"),
            created("e-4", "o-3", "1"),
        );
        let error = project(&prepared, &args(None), None, input.as_bytes()).expect_err("line 4");
        // The key `o.2` renders, but holds a `.` where the template has one token.
        assert!(
            matches!(
                error,
                ProjectError::DeadLetter {
                    line: 4,
                    reason: DeadLetterReason::SinkRejected,
                    ..
                }
            ),
            "{error}"
        );
        let good = input.replace(&created("e-3", "o.2", "1"), &created("e-3", "o:2", "1"));
        let error = project(&prepared, &args(None), None, good.as_bytes()).expect_err("line 4");
        // `:` passes as a subject token, but the KV store refuses it in a key.
        assert!(
            error.to_string().starts_with("line 4: sink_rejected: "),
            "{error}"
        );
        let good = input.replace(&created("e-3", "o.2", "1"), &created("e-3", "o-2", "1"));
        let error = project(&prepared, &args(None), None, good.as_bytes()).expect_err("line 5");
        assert!(
            error.to_string().starts_with("line 5: invalid_envelope: "),
            "{error}"
        );
        let good = good.replace("not json\n", "");
        let projection = project(&prepared, &args(None), None, good.as_bytes()).expect("projected");
        let numbers: Vec<usize> = projection.lines.iter().map(|line| line.number).collect();
        assert_eq!(numbers, [1, 3, 4, 5]);
        // `source_seq` is the line number.
        assert_eq!(
            Value::Object(projection.documents_json()),
            json!({ "o-1": { "cents": 7, "seq": 3 }, "o-2": { "cents": 1, "seq": 4 }, "o-3": { "cents": 1, "seq": 5 } })
        );
    }

    #[test]
    fn state_is_the_starting_point_without_its_record() {
        let prepared = prepared(KV, "['orders.all']");
        let state = json!({
            "o-1": { "kept": true, "cents": 1, "_jetline": { "s": { "ORDERS": 1000 } } },
            "o-2": null,
        })
        .to_string();
        let input = created("e-1", "o-1", "5");
        let projection = project(
            &prepared,
            &args(None),
            Some(state.as_bytes()),
            input.as_bytes(),
        )
        .expect("projected");
        assert_eq!(
            projection.json()["documents"],
            json!({ "o-1": { "kept": true, "cents": 5, "seq": 1 }, "o-2": null })
        );
        for bad in ["[]", "{\"o-1\": 3}", "{\"a\": {}, \"a\": {}}"] {
            let error =
                project(&prepared, &args(None), Some(bad.as_bytes()), b"").expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{bad}: {error}");
        }
    }

    #[test]
    fn events_the_routes_do_not_want_are_skipped_even_when_invalid() {
        let prepared = prepared(KV, "['orders.all']");
        let shipped = json!({
            "eventId": "e-9", "eventType": "orders.OrderShipped", "schemaVersion": 1,
            "aggregateId": "o-1", "occurredAt": "2026-11-23T10:00:00Z",
            "payload": { "orderId": "o-1", "nope": 1 },
        })
        .to_string();
        let projection =
            project(&prepared, &args(None), None, shipped.as_bytes()).expect("projected");
        assert_eq!(
            projection.json()["skipped"],
            json!([{ "line": 1, "event_type": "orders.OrderShipped", "reason": "not_routed" }])
        );
    }

    #[test]
    fn sql_parameters_show_as_json() {
        let cases = [
            (SqlValue::Null, Value::Null),
            (SqlValue::Int8(7), json!(7)),
            (SqlValue::Bytes(vec![1, 2]), json!("AQI=")),
            (
                SqlValue::Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(60)),
                json!("1970-01-01T00:01:00Z"),
            ),
            (SqlValue::Float8(f64::NAN), Value::Null),
        ];
        for (value, expected) in cases {
            assert_eq!(sql_json(&value), expected, "{value:?}");
        }
    }
}
