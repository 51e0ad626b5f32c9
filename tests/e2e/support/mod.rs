//! The test harness: a real nats-server per test, Jetline in-process or as the
//! built binary, event builders and stream readers; PostgreSQL and a local
//! webhook server for the read-model sinks; an OTLP receiver for traces;
//! certificates and NATS credentials for the security tests.

#![allow(dead_code)]

pub mod accounting;
pub mod certs;
pub mod cluster;
pub mod credentials;
pub mod events;
pub mod flaky;
pub mod http;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod prometheus;
pub mod sinks;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

pub use certs::*;
pub use cluster::*;
pub use credentials::*;
pub use events::*;
pub use flaky::*;
pub use http::*;
pub use nats::*;
pub use otlp::*;
pub use postgres::*;
pub use prometheus::*;
pub use sinks::*;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The example schema directory.
pub fn schemas_dir() -> PathBuf {
    root().join("schemas")
}

/// Runs git in `dir` as a test user, whatever the machine's git
/// configuration; fails the test when git does.
pub fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Jetline Test",
            "-c",
            "user.email=test@example.com",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// The built `jetline` binary.
pub fn jetline_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jetline"))
}

/// Runs the built binary with `args` and `stdin` on its standard input:
/// its exit code, standard output and standard error.
pub fn jetline_cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    jetline_cli_with_env(args, &[], stdin)
}

/// As [`jetline_cli`], with the variables `env` set.
pub fn jetline_cli_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (i32, String, String) {
    use std::{io::Write as _, process::Stdio};
    let mut child = std::process::Command::new(jetline_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jetline starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("input written");
    let output = child.wait_with_output().expect("jetline exits");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(timeout, Duration::from_millis(50), check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` every `every` until it returns `Some`; `None` once
/// `timeout` passed (for a test that reports a stuck run itself).
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Logs of in-process runs, when `JETLINE_TEST_LOG` is set (e.g. `debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("JETLINE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
