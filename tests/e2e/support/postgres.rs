//! PostgreSQL for the tests: a cluster of its own (`initdb` + `pg_ctl` in a
//! temporary directory, on a free loopback port, stopped on drop), or the
//! server of `DATABASE_URL` when that is set. Neither available is a failure
//! with a hint to `scripts/`, never a skip.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use super::free_port;

pub struct Postgres {
    url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL refuses to run as root: then it runs as `postgres`.
    as_postgres: bool,
}

impl Postgres {
    /// The server of `DATABASE_URL` when set, else a cluster of its own.
    pub fn start() -> Self {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Self { url, cluster: None },
            _ => Self::start_own(),
        }
    }

    /// Always a cluster of its own (a test that restarts the server).
    pub fn start_own() -> Self {
        let bin = server_bin_dir();
        let dir = tempfile::tempdir().expect("a temporary cluster directory");
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        cluster.pg(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-N",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        );
        cluster.start();
        Self {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
            cluster: Some(cluster),
        }
    }

    /// The connection string, for `url_env`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("test client connects to {}: {err}", self.url));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Stops the server at once (as a crash would) and starts it again on
    /// the same port with the same data.
    pub fn restart(&mut self) {
        let cluster = self
            .cluster
            .as_ref()
            .expect("restart needs a cluster of its own (Postgres::start_own)");
        cluster.stop();
        cluster.start();
    }
}

impl Cluster {
    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Runs a server program, as `postgres` when we are root.
    fn pg(&self, program: &str, args: &[&str]) -> Output {
        run(&mut self.command(program, args))
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(self.dir.path());
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster
                .command(
                    "pg_ctl",
                    &["-D", &cluster.data(), "-m", "immediate", "stop"],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, or Debian's.
fn server_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    });
    let debian = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|dir| dir.join("initdb").exists())
            .collect();
        found.sort();
        found.pop()
    };
    on_path.or_else(debian).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server programs (initdb, pg_ctl) not found and DATABASE_URL not set: \
             run scripts/test (it installs Debian's postgresql package) or set DATABASE_URL"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}
