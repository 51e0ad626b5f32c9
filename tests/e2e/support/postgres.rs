//! PostgreSQL for the tests: a cluster of its own (`initdb` + `pg_ctl` in a
//! temporary directory, on a free loopback port, stopped on drop), or the
//! server of `DATABASE_URL` when that is set. Neither available is a failure
//! with a hint to `scripts/`, never a skip. [`Postgres::start_tls`] starts a
//! cluster that accepts only TLS connections (and a password, if given).

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use super::{Issued, free_port};

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
    /// Server settings beyond the defaults (`-c ssl=on ...`).
    settings: String,
    /// Whether connections must use TLS (the test client's too).
    tls: bool,
}

/// A cluster that takes only TLS connections: `server` is its certificate.
pub struct PgTls<'a> {
    pub server: &'a Issued,
    /// When set, the `postgres` role's password (scram-sha-256); otherwise
    /// any connection over TLS is trusted.
    pub password: Option<&'a str>,
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
        Self::start_cluster(None)
    }

    /// A cluster of its own with `ssl=on` and `tls.server` as its
    /// certificate, refusing connections without TLS. [`Postgres::url`]
    /// has no `sslmode`: each test says which it uses.
    pub fn start_tls(tls: PgTls<'_>) -> Self {
        Self::start_cluster(Some(tls))
    }

    fn start_cluster(tls: Option<PgTls<'_>>) -> Self {
        let bin = server_bin_dir();
        let dir = tempfile::tempdir().expect("a temporary cluster directory");
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let mut cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            settings: String::new(),
            tls: tls.is_some(),
        };
        let password = tls.as_ref().and_then(|tls| tls.password);
        let mut initdb = vec![
            "-D".to_owned(),
            cluster.data(),
            "-A".to_owned(),
            "trust".to_owned(),
            "-U".to_owned(),
            "postgres".to_owned(),
            "-N".to_owned(),
            "--no-locale".to_owned(),
            "-E".to_owned(),
            "UTF8".to_owned(),
        ];
        if let Some(password) = password {
            let file = cluster.dir.path().join("password");
            cluster.own_file(&file, password, 0o600);
            initdb.push(format!("--pwfile={}", file.display()));
        }
        let initdb: Vec<&str> = initdb.iter().map(String::as_str).collect();
        cluster.pg("initdb", &initdb);
        if let Some(tls) = &tls {
            cluster.enable_tls(tls);
        }
        cluster.start();
        let credentials = password
            .map(|password| format!(":{password}"))
            .unwrap_or_default();
        Self {
            url: format!(
                "postgres://postgres{credentials}@127.0.0.1:{}/postgres",
                cluster.port
            ),
            cluster: Some(cluster),
        }
    }

    /// The connection string, for `url_env`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        if self.cluster.as_ref().is_some_and(|cluster| cluster.tls) {
            // Through the sink's own TLS setup, encrypting without verifying.
            let url = format!("{}?sslmode=require", self.url);
            let prepared = jetline::sink::postgres::tls::prepare(&url).expect("a TLS setup");
            let (client, connection) = prepared
                .config
                .connect(prepared.tls)
                .await
                .unwrap_or_else(|err| panic!("test client connects over TLS to {url}: {err}"));
            tokio::spawn(async move {
                let _ = connection.await;
            });
            return client;
        }
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

    /// `ssl=on` with the certificate and key copied into the cluster
    /// (PostgreSQL wants the key its own, readable by it alone), and a
    /// `pg_hba.conf` that rejects connections without TLS.
    fn enable_tls(&mut self, tls: &PgTls<'_>) {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
        };
        let cert = self.dir.path().join("server.crt");
        let key = self.dir.path().join("server.key");
        self.own_file(&cert, &read(&tls.server.cert), 0o644);
        self.own_file(&key, &read(&tls.server.key), 0o600);
        self.settings = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        let method = if tls.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = format!(
            "local all all trust\nhostssl all all 127.0.0.1/32 {method}\nhostnossl all all 127.0.0.1/32 reject\n"
        );
        self.own_file(
            &std::path::Path::new(&self.data()).join("pg_hba.conf"),
            &hba,
            0o600,
        );
    }

    /// Writes a file the server's user owns, with `mode`.
    fn own_file(&self, path: &std::path::Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("permissions set");
        if self.as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(path));
        }
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50{}",
            self.port,
            self.dir.path().display(),
            self.settings
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
