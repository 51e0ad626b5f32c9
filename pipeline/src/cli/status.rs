//! `jetline status`: connects to NATS and prints, per consumer, pending, ack
//! pending, redelivered and lag in seconds, read as the lag poller reads them
//! (`telemetry::lag`), and the aggregates it has parked
//! (`on_dead_letter: park_key`), and the replica active on it as its lease
//! says (`-` when no replica reports it). Changes nothing on the server.

use std::{fmt::Write as _, sync::Arc};

use crate::{
    Config, RunError, dead_letter, generation, membership, nats,
    telemetry::{
        Readiness,
        lag::{self, ConsumerLag, LagError},
    },
    text,
};

/// One consumer's figures, or why they could not be read.
#[derive(Debug)]
pub struct ConsumerStatus {
    pub consumer: String,
    pub source: String,
    pub sink: String,
    pub lag: Result<ConsumerLag, LagError>,
    /// Aggregates this consumer has parked.
    pub parked: Vec<String>,
    /// The replica whose lease says it is active on this consumer.
    pub owner: Option<String>,
}

/// How many parked aggregate ids are named per consumer.
const LISTED_PARKED: usize = 10;

/// Reads every consumer of `config`, all at once.
pub async fn read(config: &Config) -> Result<Vec<ConsumerStatus>, RunError> {
    let client = nats::connect(&config.nats, Arc::new(Readiness::default())).await?;
    let jetstream = async_nats::jetstream::new(client);
    // The consumers of each sink's live generation.
    let mut config = config.clone();
    let live = generation::live(&jetstream, &config).await?;
    generation::apply(&mut config, &live);
    let config = &config;
    let reads = config
        .pipelines
        .iter()
        .map(|spec| lag::read(&jetstream, &spec.stream, &spec.durable_name));
    let results = futures::future::join_all(reads).await;
    // Unreadable parked sets show as none: status reports, it does not fail.
    let mut parked = dead_letter::parked::all(&jetstream, &config.dead_letter.stream)
        .await
        .unwrap_or_default();
    // Leases exist only where some consumer is partitioned.
    let bucket = membership::bucket_name(&config.dead_letter.stream);
    let leases = match jetstream.get_key_value(&bucket).await {
        Ok(store) => membership::leases(&store).await.unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let owner = |consumer: &str| {
        leases
            .values()
            .find(|lease| lease.active.iter().any(|active| active == consumer))
            .map(|lease| lease.instance.clone())
    };
    Ok(config
        .pipelines
        .iter()
        .zip(results)
        .map(|(spec, lag)| ConsumerStatus {
            consumer: spec.durable_name.clone(),
            source: spec.source.clone(),
            sink: spec.sink.clone(),
            lag,
            parked: parked.remove(&spec.durable_name).unwrap_or_default(),
            owner: owner(&spec.durable_name),
        })
        .collect())
}

/// The table `status` prints: one line per consumer, columns aligned.
pub fn table(statuses: &[ConsumerStatus]) -> String {
    let header = [
        "CONSUMER",
        "SOURCE",
        "SINK",
        "PENDING",
        "ACK_PENDING",
        "REDELIVERED",
        "LAG_SECONDS",
        "PARKED",
        "OWNER",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            let mut row = vec![
                status.consumer.clone(),
                status.source.clone(),
                status.sink.clone(),
            ];
            match &status.lag {
                Ok(lag) => row.extend([
                    lag.pending.to_string(),
                    lag.ack_pending.to_string(),
                    lag.redelivered.to_string(),
                    format!("{:.3}", lag.lag_seconds),
                    status.parked.len().to_string(),
                    status.owner.clone().unwrap_or_else(|| "-".to_owned()),
                ]),
                Err(error) => row.push(format!("error: {error}")),
            }
            row
        })
        .collect();
    let mut widths = header.iter().map(String::len).collect::<Vec<_>>();
    for row in &rows {
        // An error message spans the figure columns: it does not widen them.
        let figures = if row.len() == header.len() {
            row.len()
        } else {
            3
        };
        for (width, cell) in widths.iter_mut().zip(&row[..figures]) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header.to_vec()).chain(&rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            let width = widths.get(index).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for status in statuses {
        out.push_str(&parked_line(&status.consumer, &status.parked));
    }
    out
}

/// `parked by <consumer>: "id", ...` naming the first few, or nothing.
pub fn parked_line(consumer: &str, parked: &[String]) -> String {
    if parked.is_empty() {
        return String::new();
    }
    let named: Vec<String> = parked
        .iter()
        .take(LISTED_PARKED)
        .map(|id| format!("{:?}", text::cut(id, text::QUOTED_CHARS)))
        .collect();
    let more = parked.len().saturating_sub(LISTED_PARKED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("parked by {consumer}: {}{more}\n", named.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_figures_and_shows_errors_in_place() {
        let statuses = [
            ConsumerStatus {
                consumer: "jetline-orders-orders_out".into(),
                source: "orders".into(),
                sink: "orders_out".into(),
                lag: Ok(ConsumerLag {
                    pending: 12,
                    ack_pending: 3,
                    redelivered: 1,
                    lag_seconds: 4.25,
                }),
                parked: vec!["order-7".into()],
                owner: Some("replica-a".into()),
            },
            ConsumerStatus {
                consumer: "jetline-orders-audit".into(),
                source: "orders".into(),
                sink: "audit".into(),
                lag: Err(LagError::ConsumerMissing {
                    stream: "ORDERS".into(),
                    consumer: "jetline-orders-audit".into(),
                }),
                parked: Vec::new(),
                owner: None,
            },
        ];
        let text = table(&statuses);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3], "parked by jetline-orders-orders_out: \"order-7\"");
        let columns: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "jetline-orders-orders_out",
                "orders",
                "orders_out",
                "12",
                "3",
                "1",
                "4.250",
                "1",
                "replica-a"
            ]
        );
        assert_eq!(lines[0].find("PENDING"), lines[1].find("12"));
        assert!(lines[2].contains("error: consumer jetline-orders-audit not found"));
    }
}
