//! The figures of a run: median, min and max over rounds; a table for
//! people (stderr) and one JSON object for programs (stdout with `--json`).

use serde_json::{Value, json};

use crate::{latency::Latency, modes::Mode};

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }

    fn json(self) -> String {
        object(vec![
            (
                "median".to_owned(),
                json!(round(self.median, 1)).to_string(),
            ),
            ("min".to_owned(), json!(round(self.min, 1)).to_string()),
            ("max".to_owned(), json!(round(self.max, 1)).to_string()),
        ])
    }
}

pub struct ModeReport {
    pub mode: Mode,
    pub raw_per_s: Summary,
    pub jetline_per_s: Summary,
    /// Spawn to ready, included in `jetline_per_s`.
    pub jetline_startup_ms: Summary,
}

impl ModeReport {
    pub fn ratio(&self) -> f64 {
        self.jetline_per_s.median / self.raw_per_s.median
    }
}

pub struct LatencyReport {
    pub rate_per_s: f64,
    pub seconds: f64,
    pub raw: Latency,
    pub jetline: Latency,
}

pub struct Report {
    pub events: usize,
    pub rounds: usize,
    pub envelope_bytes: usize,
    pub upcast_percent: f64,
    pub modes: Vec<ModeReport>,
    pub latency: Option<LatencyReport>,
    /// (backlog, peak RSS in KiB)
    pub rss: Vec<(usize, u64)>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "\n{} events ({} B envelopes on average, {:.0}% upcast), 1,000 aggregates, {} round(s), median [min - max]\n\n",
            thousands(self.events as f64),
            self.envelope_bytes,
            self.upcast_percent,
            self.rounds
        );
        if !self.modes.is_empty() {
            out.push_str(&format!(
                "{:<10} {:>28} {:>28} {:>6} {:>12}\n",
                "mode", "raw events/s", "jetline events/s", "ratio", "jl start ms"
            ));
            for mode in &self.modes {
                out.push_str(&format!(
                    "{:<10} {:>28} {:>28} {:>6.2} {:>12.0}\n",
                    mode.mode.name(),
                    spread(mode.raw_per_s),
                    spread(mode.jetline_per_s),
                    mode.ratio(),
                    mode.jetline_startup_ms.median,
                ));
            }
        }
        if let Some(latency) = &self.latency {
            out.push_str(&format!(
                "\nlatency, jetstream, {} events/s for {} s: {:>8} {:>8} {:>8}\n",
                thousands(latency.rate_per_s),
                latency.seconds,
                "p50 ms",
                "p99 ms",
                "max ms"
            ));
            for (side, figures) in [("raw", latency.raw), ("jetline", latency.jetline)] {
                out.push_str(&format!(
                    "{:<49} {:>8.2} {:>8.2} {:>8.2}\n",
                    side,
                    millis(figures.p50),
                    millis(figures.p99),
                    millis(figures.max)
                ));
            }
        }
        if !self.rss.is_empty() {
            out.push_str("\njetline peak RSS (VmHWM) draining a backlog\n");
            for (backlog, kib) in &self.rss {
                out.push_str(&format!(
                    "{:<20} {:>8.1} MiB\n",
                    format!("{} events", thousands(*backlog as f64)),
                    *kib as f64 / 1024.0
                ));
            }
        }
        out
    }

    /// The JSON object of `--json`, keys in the documented order (a
    /// `serde_json::Map` would sort them).
    pub fn json(&self) -> String {
        let modes = object(
            self.modes
                .iter()
                .map(|mode| {
                    let figures = object(vec![
                        ("raw_per_s".to_owned(), mode.raw_per_s.json()),
                        ("jetline_per_s".to_owned(), mode.jetline_per_s.json()),
                        (
                            "ratio".to_owned(),
                            json!(round(mode.ratio(), 3)).to_string(),
                        ),
                    ]);
                    (mode.mode.name().to_owned(), figures)
                })
                .collect(),
        );
        let latency = match &self.latency {
            None => "null".to_owned(),
            Some(latency) => {
                let side = |figures: Latency| {
                    object(vec![
                        ("p50_ms".to_owned(), millis_json(figures.p50)),
                        ("p99_ms".to_owned(), millis_json(figures.p99)),
                        ("max_ms".to_owned(), millis_json(figures.max)),
                    ])
                };
                object(vec![
                    (
                        "rate_per_s".to_owned(),
                        json!(round(latency.rate_per_s, 1)).to_string(),
                    ),
                    ("raw".to_owned(), side(latency.raw)),
                    ("jetline".to_owned(), side(latency.jetline)),
                ])
            }
        };
        let rss = if self.rss.is_empty() {
            "null".to_owned()
        } else {
            object(
                self.rss
                    .iter()
                    .map(|(backlog, kib)| {
                        (
                            format!("backlog_{}", short_count(*backlog)),
                            json!(round(*kib as f64 / 1024.0, 1)).to_string(),
                        )
                    })
                    .collect(),
            )
        };
        object(vec![
            ("events".to_owned(), self.events.to_string()),
            ("rounds".to_owned(), self.rounds.to_string()),
            ("modes".to_owned(), modes),
            ("latency".to_owned(), latency),
            ("rss_mib".to_owned(), rss),
        ])
    }
}

/// `{"key": value, ...}` in the order given; values are JSON already.
fn object(fields: Vec<(String, String)>) -> String {
    let fields: Vec<String> = fields
        .into_iter()
        .map(|(key, value)| format!("{}:{value}", Value::String(key)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn millis_json(duration: std::time::Duration) -> String {
    json!(round(millis(duration), 3)).to_string()
}

/// 100000 -> `100k`, 1000000 -> `1m`, 2500 -> `2500`: the keys of `rss_mib`.
fn short_count(count: usize) -> String {
    if count >= 1_000_000 && count.is_multiple_of(1_000_000) {
        format!("{}m", count / 1_000_000)
    } else if count >= 1_000 && count.is_multiple_of(1_000) {
        format!("{}k", count / 1_000)
    } else {
        count.to_string()
    }
}

fn spread(summary: Summary) -> String {
    format!(
        "{} [{} - {}]",
        thousands(summary.median),
        thousands(summary.min),
        thousands(summary.max)
    )
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 && digit.is_ascii_digit() {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
