//! `jetline dlq list | show | redrive`: the dead-letter stream for operators.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use base64::Engine as _;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    Config, RunError,
    dead_letter::{DeadLetterReason, DeadLetters, Entry, Filter, RedriveTarget, parked},
    envelope::{self, Decoder},
    generation, nats,
    telemetry::Readiness,
};

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// A table of entries: seq, time, sink, reason, event type, aggregate, error.
    List(FilterArgs),
    /// One entry, with its decoded envelope, as JSON.
    Show {
        /// The entry's sequence in the dead-letter stream.
        seq: u64,
    },
    /// Republish entries to their source subject, removing each once the
    /// republish is acknowledged.
    Redrive {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these entries (sequences in the dead-letter stream).
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// Apply in every sink that reads the subject, not only the one that failed.
        #[arg(long, conflicts_with = "to_sink")]
        to_source: bool,
        /// Apply in this sink only.
        #[arg(long)]
        to_sink: Option<String>,
        /// Print what would be redriven, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only entries of this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// Only entries with this reason (e.g. max_attempts, invalid_payload).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only entries stored since this time: a duration ago (`2h`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("--reason: unknown reason {0:?} (known: {known})", known = DeadLetterReason::ALL.map(|r| r.as_str()).join(", "))]
    Reason(String),
    #[error("--since: {0:?} is neither a duration nor an RFC 3339 time")]
    Since(String),
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, DlqError> {
        let reason = match &self.reason {
            Some(name) => {
                Some(DeadLetterReason::parse(name).ok_or_else(|| DlqError::Reason(name.clone()))?)
            }
            None => None,
        };
        let since = match &self.since {
            Some(text) => Some(parse_since(text).ok_or_else(|| DlqError::Since(text.clone()))?),
            None => None,
        };
        Ok(Filter {
            sink: self.sink.clone(),
            reason,
            since,
        })
    }
}

fn parse_since(text: &str) -> Option<OffsetDateTime> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Some(OffsetDateTime::now_utc() - ago);
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Runs a `dlq` subcommand; returns what to print.
pub async fn run(config: Config, command: DlqCommand) -> Result<String, RunError> {
    let prepared = crate::prepare(config)?;
    let config = &prepared.config;
    let mut connect = config.nats.clone();
    connect.connect_timeout = connect.connect_timeout.min(Duration::from_secs(5));
    let client = nats::connect(&connect, Arc::new(Readiness::default())).await?;
    let dead_letters = DeadLetters::new(
        async_nats::jetstream::new(client.clone()),
        &config.dead_letter.stream,
        &config.dead_letter.subject_prefix,
    );
    let usage = |error: DlqError| RunError::Usage(error.to_string());
    let output = match command {
        DlqCommand::List(args) => {
            let filter = args.filter().map_err(usage)?;
            let entries = dead_letters.entries(&filter).await?;
            refuse_unknown_sink(config, &filter, entries.is_empty())?;
            let mut out = table(&entries);
            let parked = parked::all(dead_letters.jetstream(), &config.dead_letter.stream)
                .await
                .unwrap_or_default();
            // The consumers of each sink's live generation.
            let mut live_config = config.clone();
            let live = generation::live(dead_letters.jetstream(), config).await?;
            generation::apply(&mut live_config, &live);
            for spec in &live_config.pipelines {
                if filter.sink.as_deref().is_none_or(|sink| sink == spec.sink)
                    && let Some(ids) = parked.get(&spec.durable_name)
                {
                    out.push_str(&super::status::parked_line(&spec.durable_name, ids));
                }
            }
            out
        }
        DlqCommand::Show { seq } => {
            let entry = dead_letters.entry(seq).await?;
            let shown = show(&entry, &prepared.decoder);
            serde_json::to_string_pretty(&shown).unwrap_or_default() + "\n"
        }
        DlqCommand::Redrive {
            filter,
            seqs,
            to_source,
            to_sink,
            dry_run,
        } => {
            let target = match (to_source, to_sink) {
                (true, _) => RedriveTarget::Source,
                (false, Some(sink)) => RedriveTarget::Sink(sink),
                (false, None) => RedriveTarget::OriginalSink,
            };
            // A redrive for a sink this configuration does not have would be
            // skipped by every sink: the event would be gone. Refuse before
            // anything leaves the dead-letter stream.
            if let RedriveTarget::Sink(sink) = &target
                && !config.sinks.contains_key(sink)
            {
                return Err(no_such_sink(config, "--to-sink", sink, ""));
            }
            let filter = filter.filter().map_err(usage)?;
            let entries: Vec<Entry> = dead_letters.entries(&filter).await?;
            refuse_unknown_sink(config, &filter, entries.is_empty())?;
            let entries: Vec<Entry> = entries
                .into_iter()
                .filter(|entry| seqs.is_empty() || seqs.contains(&entry.seq))
                .collect();
            if matches!(target, RedriveTarget::OriginalSink) {
                let unknown: Vec<String> = entries
                    .iter()
                    .filter(|entry| !config.sinks.contains_key(entry.sink()))
                    .map(|entry| {
                        format!(
                            "entry {} names sink {}",
                            entry.seq,
                            cell(entry.sink(), MAX_CELL)
                        )
                    })
                    .collect();
                if !unknown.is_empty() {
                    return Err(RunError::Usage(format!(
                        "nothing redriven: {}; redrive them --to-source or --to-sink a configured sink",
                        unknown.join("; ")
                    )));
                }
            }
            let mut out = String::new();
            for entry in &entries {
                let subject = entry
                    .header(crate::dead_letter::header::SOURCE_SUBJECT)
                    .unwrap_or("?");
                if !dry_run {
                    dead_letters.redrive(entry, &target).await?;
                }
                let verb = if dry_run { "would redrive" } else { "redriven" };
                let _ = writeln!(
                    out,
                    "{verb} {} ({} {}) to {subject}",
                    entry.seq,
                    entry.sink(),
                    entry.reason()
                );
            }
            let _ = writeln!(
                out,
                "{} entries {}",
                entries.len(),
                if dry_run { "matched" } else { "redriven" }
            );
            out
        }
    };
    let _ = client.flush().await;
    Ok(output)
}

/// A `--sink` filter naming a sink the configuration does not have, and
/// that no matching entry names either, is a typo: an empty table would
/// read as "nothing failed". Entries of a sink since renamed stay reachable.
fn refuse_unknown_sink(
    config: &Config,
    filter: &Filter,
    nothing_found: bool,
) -> Result<(), RunError> {
    match &filter.sink {
        Some(sink) if nothing_found && !config.sinks.contains_key(sink) => Err(no_such_sink(
            config,
            "--sink",
            sink,
            " and no matching dead letter names it",
        )),
        _ => Ok(()),
    }
}

/// `flag` names a sink the configuration does not have: the error lists
/// the sinks it has (also for `jetline project --sink`).
pub(crate) fn no_such_sink(config: &Config, flag: &str, sink: &str, detail: &str) -> RunError {
    RunError::Usage(format!(
        "{flag} {}: no such sink in this configuration{detail} (sinks: {})",
        cell(sink, MAX_CELL),
        config.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Widest cell of a listing: stored entries may hold any text (a 70,000
/// character aggregate id), and a table is for reading.
const MAX_CELL: usize = 64;
const MAX_ERROR_CELL: usize = 80;

fn cell(text: &str, max: usize) -> String {
    crate::text::cut(text, max).into_owned()
}

fn table(entries: &[Entry]) -> String {
    let mut rows = vec![
        [
            "SEQ",
            "TIME",
            "SINK",
            "REASON",
            "EVENT TYPE",
            "AGGREGATE",
            "ERROR",
        ]
        .map(String::from),
    ];
    for entry in entries {
        let peek = envelope::peek(entry.header("Content-Type"), &entry.body).unwrap_or_default();
        rows.push([
            entry.seq.to_string(),
            entry
                .stored_at
                .replace_nanosecond(0)
                .unwrap_or(entry.stored_at)
                .format(&Rfc3339)
                .unwrap_or_default(),
            cell(entry.sink(), MAX_CELL),
            cell(entry.reason(), MAX_CELL),
            cell(&peek.event_type, MAX_CELL),
            cell(&peek.aggregate_id, MAX_CELL),
            cell(entry.error(), MAX_ERROR_CELL),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn show(entry: &Entry, decoder: &Decoder) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = entry
        .headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            let values: Vec<&str> = values.iter().map(|value| value.as_str()).collect();
            (name.to_owned(), serde_json::Value::from(values.join(", ")))
        })
        .collect();
    let shown = decoder
        .decode(entry.header("Content-Type"), &entry.body)
        .map_err(|error| error.to_string())
        .and_then(|envelope| envelope.to_json().map_err(|error| error.to_string()));
    let envelope = match shown {
        Ok(envelope) => envelope,
        Err(error) => serde_json::json!({
            "undecodable": error,
            "peek": envelope::peek(entry.header("Content-Type"), &entry.body).map(|peek| serde_json::json!({
                "eventId": peek.event_id,
                "eventType": peek.event_type,
                "schemaVersion": peek.schema_version,
                "aggregateId": peek.aggregate_id,
            })),
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&entry.body),
        }),
    };
    serde_json::json!({
        "seq": entry.seq,
        "storedAt": entry.stored_at.format(&Rfc3339).unwrap_or_default(),
        "sink": entry.sink(),
        "reason": entry.reason(),
        "error": entry.error(),
        "headers": headers,
        "envelope": envelope,
    })
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use time::OffsetDateTime;

    use super::*;
    use crate::dead_letter::header;

    #[test]
    fn a_listing_of_any_stored_text_fits_its_cells() {
        let long = "a".repeat(70_000);
        let mut headers = HeaderMap::new();
        headers.insert(header::SINK, long.as_str());
        headers.insert(header::REASON, "sink_rejected");
        headers.insert(header::ERROR, "é".repeat(500).as_str());
        headers.insert("Content-Type", "application/json");
        let body = serde_json::json!({ "eventType": long, "aggregateId": long });
        let entry = Entry {
            seq: 1,
            stored_at: OffsetDateTime::UNIX_EPOCH,
            headers,
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
        };
        let listing = table(&[entry]);
        let line = listing.lines().nth(1).unwrap_or_default();
        assert!(
            line.chars().count() < 6 * MAX_CELL + MAX_ERROR_CELL + 40,
            "{line}"
        );
        assert!(
            line.contains("sink_rejected") && line.contains("..."),
            "{line}"
        );
    }
}
