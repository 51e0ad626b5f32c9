//! The benchmark harness (`scripts/bench`): Jetline against raw programs
//! that do the same work with the same client libraries, in one run, on a
//! private nats-server (file storage, loopback), PostgreSQL cluster and HTTP
//! receiver.
//!
//! - Throughput, per mode (`jetstream`, `kv`, `postgres`, `http`): the raw
//!   program and Jetline each drain the same preloaded stream into a fresh
//!   output, rounds alternating between them; median, min and max.
//! - Latency: publish to arrival in the output stream at a fixed rate (half
//!   the raw JetStream peak measured in this run), raw and Jetline.
//! - Memory: Jetline's peak RSS while draining backlogs.
//!
//! Method and figures: docs/benchmarks.md. Jetline runs as the built binary
//! (`CARGO_BIN_EXE_jetline`, release under `cargo bench`). `cargo bench`
//! passes `--bench`; without it (`cargo test --all-targets`) this is a small
//! smoke run that proves the harness works.
//!
//! `cargo bench --bench bench -- [--events N] [--rounds R] [--modes LIST]
//! [--latency-secs S] [--latency-rate R] [--rss-events LIST] [--json]`

#[path = "../../../tests/e2e/support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod jetline;
mod latency;
mod modes;
mod preload;
mod raw;
mod receiver;
mod report;
mod rss;

use std::{
    collections::HashMap,
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;

use modes::{Mode, Side};
use preload::Event;
use receiver::Receiver;
use report::{LatencyReport, ModeReport, Report, Summary};
use support::{NatsServer, Postgres, create_stream};

/// The preloaded source stream and its subjects (`bench.<aggregate>`).
pub const SOURCE_STREAM: &str = "BENCH";
pub const SOURCE_PREFIX: &str = "bench";

const USAGE: &str = "usage: scripts/bench [--events N] [--rounds R] [--modes jetstream,kv,postgres,http] \
[--latency-secs S (0: skip)] [--latency-rate EVENTS_PER_S] [--rss-events 100000,1000000 (none: skip)] [--json]";

#[derive(Debug, Clone)]
struct Options {
    events: usize,
    rounds: usize,
    modes: Vec<Mode>,
    /// 0 skips the latency measurement.
    latency_secs: f64,
    /// Default: half the raw JetStream peak of this run.
    latency_rate: Option<f64>,
    /// Backlogs whose drain's peak RSS is measured; empty skips it.
    rss_events: Vec<usize>,
    json: bool,
}

impl Options {
    /// What `scripts/bench` runs without arguments.
    fn full() -> Self {
        Self {
            events: 200_000,
            rounds: 3,
            modes: Mode::ALL.to_vec(),
            latency_secs: 30.0,
            latency_rate: None,
            rss_events: vec![100_000, 1_000_000],
            json: false,
        }
    }

    /// `cargo test --all-targets`: every code path, in seconds.
    fn smoke() -> Self {
        Self {
            events: 300,
            rounds: 1,
            modes: Mode::ALL.to_vec(),
            latency_secs: 1.0,
            latency_rate: None,
            rss_events: vec![1_000],
            json: false,
        }
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self::full();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .map(|value| value.replace(['_', ','], ""))
                    .ok_or_else(|| format!("{arg} needs a value"))
            };
            let number = |text: String| -> Result<usize, String> {
                text.parse()
                    .map_err(|_| format!("{arg}: not a count: {text}"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--json" => options.json = true,
                "--events" => options.events = number(value()?)?,
                "--rounds" => options.rounds = number(value()?)?,
                "--latency-secs" => {
                    let text = value()?;
                    options.latency_secs = text
                        .parse()
                        .map_err(|_| format!("--latency-secs: not a number: {text}"))?;
                }
                "--latency-rate" => {
                    let text = value()?;
                    options.latency_rate = Some(
                        text.parse()
                            .map_err(|_| format!("--latency-rate: not a number: {text}"))?,
                    );
                }
                "--modes" => {
                    let list = args.next().ok_or("--modes needs a value")?;
                    options.modes = list
                        .split(',')
                        .filter(|name| !name.is_empty())
                        .map(|name| Mode::parse(name).ok_or(format!("unknown mode {name}")))
                        .collect::<Result<_, _>>()?;
                }
                "--rss-events" => {
                    let list = args.next().ok_or("--rss-events needs a value")?;
                    options.rss_events = if list == "none" {
                        Vec::new()
                    } else {
                        list.split(',')
                            .filter(|count| !count.is_empty())
                            .map(|count| number(count.replace('_', "")))
                            .collect::<Result<_, _>>()?
                    };
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if options.events == 0 || options.rounds == 0 {
            return Err("--events and --rounds must be at least 1".to_owned());
        }
        Ok(options)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = if args.iter().any(|arg| arg == "--bench") {
        match Options::parse(&args) {
            Ok(options) => options,
            Err(message) => {
                eprintln!("{message}");
                std::process::exit(2);
            }
        }
    } else {
        // Under `cargo test`, the arguments are test filters and libtest
        // flags: run the smoke unless a filter leaves this target out.
        let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
        let wanted = filters.is_empty()
            || filters
                .iter()
                .any(|filter| "bench".contains(filter.as_str()));
        if !wanted || args.iter().any(|arg| arg == "--list") {
            return;
        }
        Options::smoke()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime.block_on(run(&options));
    eprint!("{}", report.table());
    if options.json {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", report.json()).expect("stdout");
    }
}

/// What every round shares.
pub struct Bench {
    pub server: NatsServer,
    pub js: jetstream::Context,
    /// The preloaded events; the row of stream sequence `s` is `rows[s - 1]`.
    pub rows: Arc<Vec<Event>>,
    pub receiver: Receiver,
    postgres: Option<(Postgres, tokio_postgres::Client)>,
    pub upcasters: String,
    /// Sum of `amount_cents` over the rows.
    pub expected_cents: i64,
    /// Sum over aggregates of their last stream sequence: what Jetline's
    /// PostgreSQL checkpoints add up to once every event is committed.
    pub checkpoint_target: i64,
}

impl Bench {
    pub fn pg(&self) -> &tokio_postgres::Client {
        &self.postgres.as_ref().expect("PostgreSQL started").1
    }

    /// The connection string ("" without PostgreSQL: only its mode uses it).
    pub fn postgres_url(&self) -> String {
        self.postgres
            .as_ref()
            .map(|(postgres, _)| postgres.url().to_owned())
            .unwrap_or_default()
    }

    /// Long enough for a drain at 1,000 events/s.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(self.rows.len() as u64)
    }
}

async fn run(options: &Options) -> Report {
    let began = Instant::now();
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, SOURCE_STREAM, &[&format!("{SOURCE_PREFIX}.>")]).await;
    let rows = preload::events("ev", options.events);
    preload::publish(&js, SOURCE_PREFIX, &rows).await;
    let envelope_bytes = preload::mean_size(&rows);
    let upcast_percent = preload::upcast_share(&rows);
    eprintln!(
        "preloaded {} events ({envelope_bytes} B on average, {upcast_percent:.0}% to upcast) in {:.1} s",
        rows.len(),
        began.elapsed().as_secs_f64()
    );
    let postgres = if options.modes.contains(&Mode::Postgres) {
        let postgres = Postgres::start();
        let client = postgres.client().await;
        Some((postgres, client))
    } else {
        None
    };
    let mut last_seq: HashMap<&str, i64> = HashMap::new();
    for (index, event) in rows.iter().enumerate() {
        last_seq.insert(&event.aggregate_id, index as i64 + 1);
    }
    let checkpoint_target = last_seq.values().sum();
    let expected_cents = rows.iter().filter_map(|event| event.amount_cents).sum();
    let bench = Bench {
        server,
        js,
        receiver: Receiver::start().await,
        postgres,
        upcasters: jetline::example_upcasters(),
        expected_cents,
        checkpoint_target,
        rows: Arc::new(rows),
    };

    let mut reports = Vec::new();
    for &mode in &options.modes {
        reports.push(throughput(&bench, mode, options.rounds).await);
    }

    let latency = if options.latency_secs > 0.0 {
        let rate = match options.latency_rate {
            Some(rate) => rate,
            None => {
                let peak = match reports.iter().find(|report| report.mode == Mode::JetStream) {
                    Some(report) => report.raw_per_s.median,
                    // Not measured in this run: one raw round for the peak.
                    None => {
                        modes::round(&bench, Mode::JetStream, Side::Raw, 99)
                            .await
                            .per_s
                    }
                };
                (peak / 2.0).round().max(1.0)
            }
        };
        eprintln!(
            "latency: {rate:.0} events/s for {} s, raw then jetline",
            options.latency_secs
        );
        let raw = latency::measure(&bench, Side::Raw, rate, options.latency_secs).await;
        let jetline = latency::measure(&bench, Side::Jetline, rate, options.latency_secs).await;
        Some(LatencyReport {
            rate_per_s: rate,
            seconds: options.latency_secs,
            raw,
            jetline,
        })
    } else {
        None
    };

    let mut rss = Vec::new();
    for &backlog in &options.rss_events {
        let peak = rss::measure(&bench, backlog).await;
        eprintln!(
            "rss: draining {backlog} events peaked at {:.1} MiB",
            peak as f64 / 1024.0
        );
        rss.push((backlog, peak));
    }
    eprintln!("done in {:.0} s", began.elapsed().as_secs_f64());

    Report {
        events: options.events,
        rounds: options.rounds,
        envelope_bytes,
        upcast_percent,
        modes: reports,
        latency,
        rss,
    }
}

/// `rounds` rounds of `mode`, raw and Jetline alternating; the side that
/// goes first alternates too, so that a drift (a warming page cache, a
/// growing store) does not favour one of them.
async fn throughput(bench: &Bench, mode: Mode, rounds: usize) -> ModeReport {
    let (mut raw, mut jetline, mut startup) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..rounds {
        let order = if index % 2 == 0 {
            [Side::Raw, Side::Jetline]
        } else {
            [Side::Jetline, Side::Raw]
        };
        for side in order {
            let round = modes::round(bench, mode, side, index).await;
            match side {
                Side::Raw => raw.push(round.per_s),
                Side::Jetline => {
                    jetline.push(round.per_s);
                    startup.push(round.startup.unwrap_or_default().as_secs_f64() * 1_000.0);
                }
            }
            eprintln!(
                "{} round {}/{rounds}: {:<7} {:>9.0} events/s",
                mode.name(),
                index + 1,
                match side {
                    Side::Raw => "raw",
                    Side::Jetline => "jetline",
                },
                round.per_s
            );
        }
    }
    ModeReport {
        mode,
        raw_per_s: Summary::of(&raw),
        jetline_per_s: Summary::of(&jetline),
        jetline_startup_ms: Summary::of(&startup),
    }
}
