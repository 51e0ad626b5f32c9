//! A real nats-server with JetStream on a free loopback port and a temporary
//! store, stopped on drop (optionally with configuration text of the test's:
//! authentication, TLS); and Jetline running against it.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, stream};
use jetline::sink::custom::CustomSinks;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{free_port, root, schemas_dir};

/// How the test's own clients connect, for a server that asks for
/// credentials or TLS.
type ClientOptions = Arc<dyn Fn() -> async_nats::ConnectOptions + Send + Sync>;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// The configuration file given with `-c`, if any.
    config_file: Option<PathBuf>,
    client_options: Option<ClientOptions>,
}

fn nats_server_bin() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let local = root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.exists())
    }) {
        return found;
    }
    panic!(
        "nats-server not found: run scripts/test (it installs nats-server-bin 2.15.1 into .tools/) \
         or set NATS_SERVER_BIN"
    );
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `config` (nats-server configuration text: `authorization`,
    /// `tls`, operator mode) in a file given with `-c`; address, port and
    /// JetStream come from the command line as for [`NatsServer::start`].
    /// A server that requires credentials or TLS needs
    /// [`NatsServer::with_client_options`] for the test's own clients.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> Self {
        let store = tempfile::tempdir().expect("a temporary store directory");
        let config_file = config.map(|text| {
            let path = store.path().join("server.conf");
            std::fs::write(&path, text).expect("server configuration written");
            path
        });
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
            config_file,
            client_options: None,
        };
        server.spawn();
        server
    }

    /// The options of the test's own clients ([`NatsServer::client`],
    /// [`NatsServer::jetstream`]).
    pub fn with_client_options(
        mut self,
        options: impl Fn() -> async_nats::ConnectOptions + Send + Sync + 'static,
    ) -> Self {
        self.client_options = Some(Arc::new(options));
        self
    }

    fn log_file(&self) -> PathBuf {
        self.store.path().join("server.log")
    }

    fn spawn(&mut self) {
        let mut command = Command::new(nats_server_bin());
        if let Some(config_file) = &self.config_file {
            command.arg("-c").arg(config_file);
        }
        let log = std::fs::File::create(self.log_file()).expect("server log created");
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "nats-server did not listen ({exited:?}): {}",
                    std::fs::read_to_string(self.log_file()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (keeping its store) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (it flushes its store and closes its
    /// connections), keeping the store for [`NatsServer::start_again`].
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port with the same store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        let options = match &self.client_options {
            Some(options) => options(),
            None => async_nats::ConnectOptions::new(),
        };
        options
            .connect(self.url())
            .await
            .expect("test client connects")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a stream with the given subjects.
pub async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &[&str],
) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("stream created")
}

/// The YAML of a configuration against `url`, with the example schemas and a
/// metrics endpoint on an ephemeral port. `body` holds sources, sinks, routes
/// and anything else.
pub fn config_yaml(url: &str, body: &str) -> String {
    config_yaml_nats(&format!("url: \"{url}\""), body)
}

/// As [`config_yaml`], with `nats` the keys of the `nats:` block in flow
/// style (`url: "nats://…", user: app, password_file: "/…"`).
pub fn config_yaml_nats(nats: &str, body: &str) -> String {
    format!(
        "nats: {{ {nats} }}\nschemas: {{ dir: \"{}\" }}\nmetrics: {{ listen: \"127.0.0.1:0\", lag_poll_interval: 200ms }}\n{body}",
        schemas_dir().display()
    )
}

/// Jetline running in-process through `jetline::run`.
pub struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), jetline::RunError>>,
}

impl Running {
    pub fn start(yaml: &str) -> Self {
        Self::start_with(yaml, CustomSinks::default())
    }

    /// With the sinks of `type: custom` that the test supplies.
    pub fn start_with(yaml: &str, sinks: CustomSinks) -> Self {
        super::init_logs();
        let config = jetline::config::load_str(yaml).unwrap_or_else(|err| panic!("config: {err}"));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(jetline::run_with(config, shutdown.clone(), sinks));
        Self { shutdown, handle }
    }

    /// Whether `jetline::run` is still running (it has not returned).
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Asks for a graceful stop and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("jetline task joins")
            .expect("jetline stops cleanly");
    }
}

/// Where a process's log goes unless a test reads it: the test's own
/// stderr, or with `JETLINE_TEST_LOG_DIR` set, `<dir>/<JETLINE_INSTANCE>.log`
/// (one file per replica; `JETLINE_TEST_LOG` sets their level).
fn debug_log(env: &[(&str, &str)]) -> Stdio {
    let instance = env.iter().find(|(key, _)| *key == "JETLINE_INSTANCE");
    match (std::env::var("JETLINE_TEST_LOG_DIR"), instance) {
        (Ok(dir), Some((_, name))) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{dir}/{name}.log"))
            .map_or_else(|_| Stdio::inherit(), Stdio::from),
        _ => Stdio::inherit(),
    }
}

/// The built binary, killed on drop.
pub struct Process {
    child: Child,
    /// The configuration written for it, unless it runs a file of its own.
    _config: Option<tempfile::NamedTempFile>,
    /// Where its log goes, when the test reads it.
    log: Option<tempfile::NamedTempFile>,
}

impl Process {
    pub fn start(yaml: &str) -> Self {
        Self::start_with_env(yaml, &[])
    }

    /// With extra environment variables (secrets such as `url_env`).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(yaml, env, None)
    }

    /// As [`Process::start_with_env`], logging at `level` to a file that
    /// [`Process::logs`] reads.
    pub fn start_logged(yaml: &str, env: &[(&str, &str)], level: &str) -> Self {
        Self::spawn(yaml, env, Some(level))
    }

    /// Runs the configuration file at `path` where it is (its relative
    /// paths relative to it), with `env`, logging as
    /// [`Process::start_logged`] does.
    pub fn start_file(path: &std::path::Path, env: &[(&str, &str)], level: &str) -> Self {
        Self::spawn_file(path, None, env, Some(level))
    }

    fn spawn(yaml: &str, env: &[(&str, &str)], logged: Option<&str>) -> Self {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("config file");
        file.write_all(yaml.as_bytes()).expect("config written");
        let path = file.path().to_owned();
        Self::spawn_file(&path, Some(file), env, logged)
    }

    fn spawn_file(
        path: &std::path::Path,
        config: Option<tempfile::NamedTempFile>,
        env: &[(&str, &str)],
        logged: Option<&str>,
    ) -> Self {
        let log = logged.map(|_| tempfile::NamedTempFile::new().expect("log file"));
        let stderr = match &log {
            Some(log) => Stdio::from(log.reopen().expect("log file opens")),
            None => debug_log(env),
        };
        let child = Command::new(super::jetline_bin())
            .args(["run", "--config"])
            .arg(path)
            .env(
                "JETLINE_LOG",
                logged
                    .map(str::to_owned)
                    .or_else(|| std::env::var("JETLINE_TEST_LOG").ok())
                    .unwrap_or_else(|| "warn".to_owned()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("jetline starts");
        Self {
            child,
            _config: config,
            log,
        }
    }

    /// What it logged so far (started with [`Process::start_logged`]).
    pub fn logs(&self) -> String {
        let log = self.log.as_ref().expect("started with start_logged");
        std::fs::read_to_string(log.path()).expect("log read")
    }

    /// SIGTERM, then the exit code once it has stopped.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok()?.code()
    }

    /// SIGKILL: no chance to settle anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (the benchmark reads its peak memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message stored in `stream`, in sequence order.
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut handle = js.get_stream(stream).await.expect("stream exists");
    let info = handle.info().await.expect("stream info");
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        if let Ok(message) = handle.get_raw_message(seq).await {
            out.push(message);
        }
    }
    out
}

/// Number of messages stored in `stream` (0 when it does not exist).
pub async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut handle) => handle
            .info()
            .await
            .map(|info| info.state.messages)
            .unwrap_or(0),
        Err(_) => 0,
    }
}
