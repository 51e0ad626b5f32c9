//! A real Prometheus (Debian's `prometheus` package) on a free loopback port
//! with a temporary TSDB, run from the shipped `config/prometheus/` files and
//! killed on drop; `promtool`; and a reader of the Prometheus text format.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{eventually, free_port, root};

/// `name` from the environment variable `variable`, else from PATH; a missing
/// binary fails the test with a hint, never skips it.
fn prometheus_tool(name: &str, variable: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: run scripts/test (it installs Debian's prometheus package) \
                 or set {variable}"
            )
        })
}

pub fn promtool_bin() -> PathBuf {
    prometheus_tool("promtool", "PROMTOOL_BIN")
}

/// The shipped Prometheus files.
pub fn prometheus_config_dir() -> PathBuf {
    root().join("config/prometheus")
}

/// Runs promtool with `args` (and `stdin` when given): exit code and output.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(promtool_bin())
        .args(args)
        .current_dir(prometheus_config_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("promtool reads its input");
    }
    let output = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// One sample of an instant query.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus from the shipped `prometheus.yml` and `alerts.yml`,
    /// with the Jetline target replaced by `jetline` and the intervals cut to
    /// 500ms, and waits until it is ready.
    pub async fn start(jetline: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("a temporary Prometheus directory");
        let shipped = prometheus_config_dir();
        let mut config =
            std::fs::read_to_string(shipped.join("prometheus.yml")).expect("prometheus.yml");
        for (from, to) in [
            ("jetline:9464", jetline.to_string()),
            ("scrape_interval: 15s", "scrape_interval: 500ms".to_owned()),
            (
                "evaluation_interval: 15s",
                "evaluation_interval: 500ms".to_owned(),
            ),
        ] {
            assert!(config.contains(from), "prometheus.yml has {from}");
            config = config.replace(from, &to);
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config written");
        std::fs::copy(shipped.join("alerts.yml"), dir.path().join("alerts.yml"))
            .expect("alerts.yml copied");

        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_tool("prometheus", "PROMETHEUS_BIN"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            child,
            port,
            dir,
            http: reqwest::Client::new(),
        };
        let ready = prometheus.url("/-/ready");
        let http = prometheus.http.clone();
        let log = prometheus.dir.path().join("prometheus.log");
        eventually(Duration::from_secs(60), "Prometheus ready", || {
            let (http, ready, log) = (http.clone(), ready.clone(), log.clone());
            async move {
                let up = http.get(&ready).send().await;
                if up.is_err() {
                    // Fail fast, with its log, when it refused the config.
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(!text.contains("level=error"), "Prometheus failed:\n{text}");
                }
                up.ok().filter(|r| r.status().is_success()).map(|_| ())
            }
        })
        .await;
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The data of a successful API answer, or the API's error.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let answer: Value = self
            .http
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .map_err(|err| err.to_string())?
            .json()
            .await
            .map_err(|err| err.to_string())?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("{}: {}", answer["errorType"], answer["error"])),
        }
    }

    /// An instant query: its samples, or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        let value = |pair: &Value| {
            pair[1]
                .as_str()
                .and_then(|text| text.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|sample| Sample {
                    labels: serde_json::from_value(sample["metric"].clone()).unwrap_or_default(),
                    value: value(&sample["value"]),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// The loaded rule groups, as `/api/v1/rules` lists them.
    pub async fn rule_groups(&self) -> Vec<Value> {
        let data = self.api("/api/v1/rules", &[]).await.expect("rules listed");
        data["groups"].as_array().cloned().unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the samples `name{labels}` in a Prometheus text page (the
/// labels given must match, others are ignored), as PromQL's `sum` would.
pub fn metric_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let present: Vec<(&str, &str)> = series_labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            (series_name == name && labels.iter().all(|wanted| present.contains(wanted)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// GET `url`: status code and body.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Reads a file shipped in the repository.
pub fn shipped(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(root().join(path.as_ref()))
        .unwrap_or_else(|err| panic!("{}: {err}", path.as_ref().display()))
}
