//! The servers of a chaos run and the configuration they share: one source
//! stream `CHAOS` read by four sinks at once (a JetStream copy, a KV
//! document per aggregate, a PostgreSQL row per event, a webhook), each
//! through its own durable consumer; and the waits on the server's view of
//! those consumers (their ack floors), which tell progress and the end.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};

use super::{
    model::{Model, PoisonMix, SUBJECT_PREFIX, Size},
    receiver::Receiver,
};
use crate::support::{
    NatsServer, Postgres, Process, config_yaml, consumer_settled, create_stream, free_port,
    http_get, poll_until,
};

pub const SOURCE_STREAM: &str = "CHAOS";
pub const OUTPUT_STREAM: &str = "CHAOS_OUT";
pub const DEAD_LETTER_STREAM: &str = "CHAOS_DLQ";
pub const DEAD_LETTER_PREFIX: &str = "chaos_dlq";
pub const BUCKET: &str = "CHAOS_COUNTS";
pub const TABLE: &str = "chaos_rows";
/// The variable the PostgreSQL sink reads its connection string from.
pub const DATABASE_URL_ENV: &str = "CHAOS_DATABASE_URL";

/// The four sinks, as the configuration names them.
pub const COPY: &str = "copy";
pub const COUNTS: &str = "counts";
pub const ROWS: &str = "rows";
pub const HOOK: &str = "hook";
pub const SINKS: [&str; 4] = [COPY, COUNTS, ROWS, HOOK];

pub struct World {
    pub size: Size,
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub postgres: Postgres,
    pub receiver: Receiver,
    pub metrics_port: u16,
    pub model: Model,
    /// The `jetline` process of the run, and the log of the last one stopped.
    jetline: Option<Process>,
    last_log: String,
}

impl World {
    /// Servers with the source, output and table ready; `nats_settings` are
    /// extra nats-server settings (`max_payload`).
    pub async fn start(nats_settings: &str) -> Self {
        let nats = if nats_settings.is_empty() {
            NatsServer::start()
        } else {
            NatsServer::start_with_config(nats_settings)
        };
        let js = nats.jetstream().await;
        create_stream(&js, SOURCE_STREAM, &[&format!("{SUBJECT_PREFIX}.>")]).await;
        create_stream(&js, OUTPUT_STREAM, &["chaosout.>"]).await;
        let postgres = Postgres::start_own();
        postgres
            .client()
            .await
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (seq bigserial PRIMARY KEY, event_id text NOT NULL, \
                 aggregate_id text NOT NULL, amount_cents bigint NOT NULL)"
            ))
            .await
            .expect("table created");
        Self {
            size: Size::from_env(),
            nats,
            js,
            postgres,
            receiver: Receiver::start().await,
            metrics_port: free_port(),
            model: Model::default(),
            jetline: None,
            last_log: String::new(),
        }
    }

    /// The configuration: the four sinks, with `hook_settings` added to the
    /// webhook's block and `extra_sinks` (indented by two spaces) after them;
    /// `extra_sinks` names go into the route too.
    pub fn yaml(&self, hook_settings: &str, extra_sinks: &[(&str, &str)]) -> String {
        let mut sinks = format!(
            "
  {COPY}: {{ type: jetstream, subject: 'chaosout.{{aggregate_id}}' }}
  {COUNTS}:
    type: kv
    bucket: {BUCKET}
    key: '{{aggregate_id}}'
    on:
      orders.OrderCreated:
        increment: {{ events: 1, total_cents: payload.total_amount_cents }}
        append: {{ applied: event_id }}
  {ROWS}:
    type: postgres
    url_env: {DATABASE_URL_ENV}
    on:
      orders.OrderCreated:
        sql: 'INSERT INTO {TABLE} (event_id, aggregate_id, amount_cents) VALUES ($1, $2, $3)'
        params: [event_id, aggregate_id, payload.total_amount_cents]
  {HOOK}: {{ type: http, url: '{}', timeout: 10s{} }}",
            self.receiver.url,
            if hook_settings.is_empty() {
                String::new()
            } else {
                format!(", {hook_settings}")
            }
        );
        let mut names: Vec<&str> = SINKS.to_vec();
        for (name, block) in extra_sinks {
            sinks.push_str(&format!("\n  {name}: {block}"));
            names.push(name);
        }
        let yaml = config_yaml(
            &self.nats.url(),
            &format!(
                "
sources:
  chaos: {{ stream: {SOURCE_STREAM}, subjects: ['{SUBJECT_PREFIX}.>'] }}
sinks:{sinks}
routes:
  - {{ name: all, from: chaos, to: [{}] }}
upcasters:
  orders.OrderCreated:
    - {{ from: 1, to: 2, steps: [{{ rename: {{ from: total, to: total_amount }} }}, {{ set_default: {{ field: currency, value: USD }} }}] }}
    - {{ from: 2, to: 3, steps: [{{ convert: {{ field: total_amount, to: int64, multiply: 100, rename_to: total_amount_cents }} }}] }}
consumers:
  ack_wait: 3s
  takeover_after: 3s
  max_ack_pending: 2000
  concurrency: 64
  retry: {{ max_attempts: 100, backoff: [100ms, 500ms, 1s], jitter: 0.2 }}
dead_letter: {{ stream: {DEAD_LETTER_STREAM}, subject_prefix: {DEAD_LETTER_PREFIX} }}
",
                names.join(", ")
            ),
        );
        yaml.replace(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{}\"", self.metrics_port),
        )
    }

    /// [`World::start`], with the whole stream (`size.events`) published.
    pub async fn with_stream(nats_settings: &str, poison: PoisonMix) -> Self {
        let mut world = Self::start(nats_settings).await;
        world.publish(world.size.events, poison).await;
        world
    }

    /// Generates and publishes the next `count` messages of the stream.
    pub async fn publish(&mut self, count: usize, poison: PoisonMix) {
        let batch = self.model.generate(self.size, count, poison);
        self.model.publish(&self.js, batch).await;
    }

    /// Starts the built binary on `yaml`, logging JSON lines at `warn`.
    pub fn start_jetline(&mut self, yaml: &str) {
        self.jetline = Some(Process::start_logged(
            yaml,
            &[
                (DATABASE_URL_ENV, self.postgres.url()),
                ("JETLINE_LOG_FORMAT", "json"),
            ],
            "warn",
        ));
    }

    /// SIGKILL to the running process.
    pub fn kill_jetline(&mut self) {
        if let Some(process) = self.jetline.take() {
            self.last_log = process.logs();
            process.kill();
        }
    }

    /// Ends the run's process (SIGKILL: the accounting needs no more from
    /// it), keeping its log for the report.
    pub fn stop_jetline(&mut self) {
        self.kill_jetline();
    }

    /// The running process's log, or the last one's.
    pub fn jetline_log(&self) -> String {
        self.jetline
            .as_ref()
            .map_or_else(|| self.last_log.clone(), Process::logs)
    }

    /// `/readyz`: its status and body, `None` while nothing listens.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        http_get(&format!("http://127.0.0.1:{}/readyz", self.metrics_port)).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn until_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            matches!(self.readyz().await, Some((200, _)))
        })
        .await
    }

    /// Each sink's ack floor (the stream sequence up to which it settled
    /// everything), or `None` while one cannot be read.
    pub async fn ack_floors(&self, sinks: &[&str]) -> Option<Vec<u64>> {
        let stream = self.js.get_stream(SOURCE_STREAM).await.ok()?;
        let mut floors = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let mut consumer = stream
                .get_consumer::<pull::Config>(&durable(sink))
                .await
                .ok()?;
            floors.push(consumer.info().await.ok()?.ack_floor.stream_sequence);
        }
        Some(floors)
    }

    /// The smallest ack floor of `sinks`: how far all of them got.
    pub async fn slowest_floor(&self, sinks: &[&str]) -> Option<u64> {
        self.ack_floors(sinks).await?.into_iter().min()
    }

    /// Whether every sink has settled every published message.
    pub async fn settled(&self, sinks: &[&str]) -> bool {
        for sink in sinks {
            if !consumer_settled(&self.js, SOURCE_STREAM, &durable(sink)).await {
                return false;
            }
        }
        true
    }

    /// Waits until every sink settled every published message.
    pub async fn until_settled(&self, sinks: &[&str]) -> bool {
        wait_until(self.settle_timeout(), || self.settled(sinks)).await
    }

    /// How long a run may take to settle: 2 minutes, and 5 ms per event.
    pub fn settle_timeout(&self) -> Duration {
        Duration::from_secs(120 + self.size.events as u64 / 200)
    }

    /// Waits until every sink has settled something beyond where it stood
    /// when called (or everything); the time since `since`, or `None` when
    /// that did not happen within `timeout`.
    pub async fn recovered(
        &self,
        sinks: &[&str],
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let last = self.model.last_seq();
        let start = loop {
            if let Some(floors) = self.ack_floors(sinks).await {
                break floors;
            }
            if since.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let advanced = wait_until(timeout.saturating_sub(since.elapsed()), || async {
            self.ack_floors(sinks).await.is_some_and(|floors| {
                floors
                    .iter()
                    .zip(&start)
                    .all(|(now, then)| now > then || *now >= last)
            })
        })
        .await;
        advanced.then(|| since.elapsed())
    }

    /// After a fault that ended at `cleared`: waits until every sink moves
    /// again, then until the run settles.
    pub async fn recover(&self, started: Instant, cleared: Instant) -> Recovery {
        let recovered = self
            .recovered(&SINKS, cleared, Duration::from_secs(120))
            .await;
        Recovery {
            recovered,
            settled: self.until_settled(&SINKS).await,
            elapsed: started.elapsed(),
        }
    }

    /// Waits until every sink settled at least `share` of what was published.
    pub async fn until_progress(&self, share: f64) -> bool {
        self.until_progress_of(&SINKS, share).await
    }

    /// As [`World::until_progress`], for the slowest of `sinks` only.
    pub async fn until_progress_of(&self, sinks: &[&str], share: f64) -> bool {
        let target = (self.model.last_seq() as f64 * share) as u64;
        wait_until(Duration::from_secs(300), || async {
            self.slowest_floor(sinks)
                .await
                .is_some_and(|floor| floor >= target)
        })
        .await
    }
}

/// How a run went on after its fault ended.
pub struct Recovery {
    /// From the fault's end until every sink settled something new.
    pub recovered: Option<Duration>,
    pub settled: bool,
    /// From the start of the run until it settled.
    pub elapsed: Duration,
}

/// The durable consumer of `sink` on the chaos source.
pub fn durable(sink: &str) -> String {
    format!("jetline-chaos-{sink}")
}

/// Polls `check` every 100 ms until it holds (true) or `timeout` passed
/// (false): a scenario reports a stuck run instead of panicking in a wait.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(timeout, Duration::from_millis(100), || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
    .is_some()
}
