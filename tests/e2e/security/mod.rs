//! Security end to end: Jetline over every NATS authentication kind and
//! over TLS and mutual TLS, the clear errors when credentials or
//! certificates are wrong (`nats_auth`); the PostgreSQL sink over TLS
//! (`pg_tls`); no secret in logs, `check`, `status` or `/metrics`
//! (`secrets`). Servers are real, configured in each test's directory.

mod nats_auth;
mod pg_tls;
mod secrets;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;

/// A configuration reading `<stream>.>` into a JetStream sink `out` that
/// writes to `<stream>_out.<aggregate_id>`; `nats` is the `nats:` block's
/// keys in flow style.
pub fn copy_yaml(nats: &str, stream: &str) -> String {
    config_yaml_nats(
        nats,
        &format!(
            "
sources:
  orders: {{ stream: {stream}, subjects: ['{stream}.>'] }}
sinks:
  out: {{ type: jetstream, subject: '{stream}_out.{{aggregate_id}}' }}
routes:
  - {{ name: all, from: orders, to: [out] }}
dead_letter: {{ stream: DLQ_{stream}, subject_prefix: dlq_{stream} }}
"
        ),
    )
}

/// The ids of the events published by [`publish_events`].
pub fn event_ids(stream: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{stream}-{n}")).collect()
}

/// Creates `stream` and `<stream>_OUT` and publishes `count` events.
pub async fn publish_events(server: &NatsServer, stream: &str, count: usize) {
    let js = server.jetstream().await;
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    create_stream(&js, &format!("{stream}_OUT"), &[&format!("{stream}_out.>")]).await;
    let events = event_ids(stream, count)
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let document = created_v3(id, &format!("order-{n}"), n as i64);
            Outgoing::binary(&format!("{stream}.created"), &document)
        })
        .collect();
    publish_all(&js, events).await;
}

/// Runs the binary on [`copy_yaml`] and shows that it works over this
/// connection: every published event is in `<stream>_OUT`, each once.
pub async fn assert_copies_events(
    server: &NatsServer,
    nats: &str,
    env: &[(&str, &str)],
    stream: &str,
) {
    const EVENTS: usize = 3;
    publish_events(server, stream, EVENTS).await;
    let mut jetline = Process::start_logged(&copy_yaml(nats, stream), env, "warn");
    let js = server.jetstream().await;
    settled_while_running(&mut jetline, &js, stream, "out").await;
    let copied = stream_messages(&js, &format!("{stream}_OUT")).await;
    let mut ids: Vec<String> = copied
        .iter()
        .filter_map(|message| message.headers.get("Nats-Msg-Id"))
        .map(|id| id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, event_ids(stream, EVENTS), "each event copied once");
    assert_eq!(jetline.terminate(), Some(0), "a clean stop");
}

/// Waits until the consumer `jetline-orders-<sink>` settled all of
/// `stream`; fails with Jetline's log as soon as it exits.
pub async fn settled_while_running(
    jetline: &mut Process,
    js: &async_nats::jetstream::Context,
    stream: &str,
    sink: &str,
) {
    let durable = format!("jetline-orders-{sink}");
    eventually(Duration::from_secs(30), "every event settled", || {
        let exited = jetline.exit_status();
        let logs = jetline.logs();
        let durable = &durable;
        async move {
            assert!(exited.is_none(), "jetline exited ({exited:?}):\n{logs}");
            consumer_settled(js, stream, durable).await.then_some(())
        }
    })
    .await;
}

/// How a command of the binary ended.
pub struct Ended {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// `jetline <args> --config FILE` with `yaml` in a file, to its end (killed
/// after `limit`, which fails the test).
pub fn jetline_command(args: &[&str], yaml: &str, env: &[(&str, &str)], limit: Duration) -> Ended {
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("jetline.yaml");
    std::fs::write(&config, yaml).expect("config written");
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |path: &Path| std::fs::File::create(path).expect("output file");
    let started = Instant::now();
    let mut child = Command::new(jetline_bin())
        .args(args)
        .arg("--config")
        .arg(&config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file(&stdout))
        .stderr(file(&stderr))
        .spawn()
        .expect("jetline starts");
    let status = loop {
        if let Some(status) = child.try_wait().expect("jetline waited for") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "jetline {args:?} still running after {limit:?}:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    Ended {
        code: status.code(),
        stdout: read(&stdout),
        stderr: read(&stderr),
        took: started.elapsed(),
    }
}

/// A path for YAML (quoted, as paths may hold spaces).
pub fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}
