//! Jetline as the benchmark runs it: the built binary in a process of its
//! own (`jetline run --config FILE`), so that its memory can be read from
//! /proc and it shares no scheduler with the raw programs; a configuration
//! of one source feeding one sink at the default consumer settings, with the
//! example's upcasters; waiting for readiness and for a condition.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use crate::support::{Process, free_port, root, schemas_dir};

/// Dead letters of every run: the benchmark fails if any appear.
pub const DLQ_STREAM: &str = "BENCH_DLQ";

/// The `upcasters:` block of `config/jetline.yaml`, so that the benchmark
/// upcasts exactly as the example does.
pub fn example_upcasters() -> String {
    let path = root().join("config/jetline.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("example parses");
    let mut block = serde_yaml_ng::Mapping::new();
    block.insert(
        "upcasters".into(),
        example
            .get("upcasters")
            .cloned()
            .expect("config/jetline.yaml has upcasters"),
    );
    serde_yaml_ng::to_string(&block).expect("yaml")
}

/// What one Jetline run reads and writes.
pub struct Spec<'a> {
    pub nats_url: &'a str,
    /// Source stream and its subject prefix (`<prefix>.>`).
    pub stream: &'a str,
    pub prefix: &'a str,
    /// The durable prefix: the consumer is `<durable_prefix>-bench-out`.
    pub durable_prefix: &'a str,
    /// The sink `out`, its keys indented by four spaces.
    pub sink_block: &'a str,
    pub upcasters: &'a str,
}

/// The consumer Jetline makes for the source `bench` and the sink `out`.
pub fn durable(durable_prefix: &str) -> String {
    format!("{durable_prefix}-bench-out")
}

impl Spec<'_> {
    /// The configuration: everything at its defaults (consumer settings,
    /// lag poll interval) but the names.
    fn yaml(&self, metrics_port: u16) -> String {
        format!(
            "nats: {{ url: \"{url}\" }}
schemas: {{ dir: \"{schemas}\" }}
metrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}
sources:
  bench: {{ stream: {stream}, subjects: [\"{prefix}.>\"] }}
sinks:
  out:
{block}
routes:
  - {{ name: all, from: bench, to: [out] }}
consumers: {{ durable_prefix: {durable_prefix} }}
dead_letter: {{ stream: {DLQ_STREAM}, subject_prefix: bench_dlq }}
{upcasters}",
            url = self.nats_url,
            schemas = schemas_dir().display(),
            stream = self.stream,
            prefix = self.prefix,
            block = self.sink_block,
            durable_prefix = self.durable_prefix,
            upcasters = self.upcasters,
        )
    }
}

/// A running Jetline, killed on drop.
pub struct Jetline {
    process: Process,
    pub started: Instant,
    metrics_port: u16,
}

impl Jetline {
    /// Jetline copying the stream `source` (subjects `<source>.>`) into a
    /// JetStream sink on `<output>.<aggregate_id>`, its consumer named after
    /// `source`: the run of the latency and memory measurements.
    pub fn start_copy(nats_url: &str, source: &str, output: &str, upcasters: &str) -> Self {
        let block = format!("    type: jetstream\n    subject: \"{output}.{{aggregate_id}}\"");
        let spec = Spec {
            nats_url,
            stream: source,
            prefix: source,
            durable_prefix: source,
            sink_block: &block,
            upcasters,
        };
        Self::start(&spec, &[])
    }

    /// Starts the binary; `started` is taken just before the spawn.
    pub fn start(spec: &Spec<'_>, env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let yaml = spec.yaml(metrics_port);
        let started = Instant::now();
        let process = Process::start_with_env(&yaml, env);
        Self {
            process,
            started,
            metrics_port,
        }
    }

    /// Waits until `/readyz` answers 200 (connected, every consumer bound);
    /// the time since the spawn.
    pub async fn ready(&mut self) -> Duration {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let http = reqwest::Client::new();
        self.until(
            "readiness",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || {
                let request = http.get(&url).send();
                async move {
                    request
                        .await
                        .is_ok_and(|response| response.status().is_success())
                }
            },
        )
        .await
    }

    /// Polls `check` every `every` until it holds; the time since the spawn
    /// at which it was seen to hold. Panics if Jetline exits or `timeout`
    /// passes first.
    pub async fn until<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        mut check: F,
    ) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return self.started.elapsed();
            }
            if let Some(status) = self.process.exit_status() {
                panic!("jetline exited ({status}) while waiting for {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(every).await;
        }
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("/proc/<pid>/status of jetline");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}
