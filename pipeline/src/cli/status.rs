//! `jetline status`: connects to NATS and prints, per consumer, pending, ack
//! pending, redelivered and lag in seconds, read as the lag poller reads them
//! (`telemetry::lag`). Changes nothing on the server.

use std::{fmt::Write as _, sync::Arc};

use crate::{
    Config, RunError, nats,
    telemetry::{
        Readiness,
        lag::{self, ConsumerLag, LagError},
    },
};

/// One consumer's figures, or why they could not be read.
#[derive(Debug)]
pub struct ConsumerStatus {
    pub consumer: String,
    pub source: String,
    pub sink: String,
    pub lag: Result<ConsumerLag, LagError>,
}

/// Reads every consumer of `config`, all at once.
pub async fn read(config: &Config) -> Result<Vec<ConsumerStatus>, RunError> {
    let client = nats::connect(&config.nats, Arc::new(Readiness::default())).await?;
    let jetstream = async_nats::jetstream::new(client);
    let reads = config
        .pipelines
        .iter()
        .map(|spec| lag::read(&jetstream, &spec.stream, &spec.durable_name));
    let results = futures::future::join_all(reads).await;
    Ok(config
        .pipelines
        .iter()
        .zip(results)
        .map(|(spec, lag)| ConsumerStatus {
            consumer: spec.durable_name.clone(),
            source: spec.source.clone(),
            sink: spec.sink.clone(),
            lag,
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
    out
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
            },
            ConsumerStatus {
                consumer: "jetline-orders-audit".into(),
                source: "orders".into(),
                sink: "audit".into(),
                lag: Err(LagError::ConsumerMissing {
                    stream: "ORDERS".into(),
                    consumer: "jetline-orders-audit".into(),
                }),
            },
        ];
        let text = table(&statuses);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
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
                "4.250"
            ]
        );
        assert_eq!(lines[0].find("PENDING"), lines[1].find("12"));
        assert!(lines[2].contains("error: consumer jetline-orders-audit not found"));
    }
}
