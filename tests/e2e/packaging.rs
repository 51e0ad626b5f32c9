//! The container files, checked by reading them and by running here what
//! can run without a Docker engine: the compose file names files that exist,
//! pinned images (NATS at the version the tests run), ports that the
//! configuration listens on, `JETLINE__*` variables that are configuration
//! keys, streams that cover what Jetline reads and writes, a Prometheus
//! configuration that promtool accepts and Grafana provisioning that finds
//! Prometheus and the dashboard; the whole stack (streams from their files,
//! the table from its init script, Jetline, the sample publisher) runs
//! against real servers with the compose environment; the Dockerfile caches
//! its dependencies in their own layer (its stub step is run and cargo reads
//! the result), runs unprivileged and probes `/readyz` with `jetline ready`,
//! which is tested against a real Jetline.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_yaml_ng::Value;

use crate::support::*;

// ---------------------------------------------------------------- compose

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|err| panic!("{}: {err}", path.as_ref().display()))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read(root().join("docker-compose.yml")))
        .expect("docker-compose.yml is YAML")
}

fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(name, service)| {
            (
                name.as_str().expect("a service name").to_owned(),
                service.clone(),
            )
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| items.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

/// A YAML scalar as the text compose passes on.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A service's environment, from the mapping or the `KEY=value` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(mapping) => mapping
            .iter()
            .filter_map(|(key, value)| Some((key.as_str()?.to_owned(), scalar(value)?)))
            .collect(),
        Value::Sequence(_) => strings(&service["environment"])
            .iter()
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// One entry of a service's `volumes`.
#[derive(Debug)]
struct Mount {
    /// A host path (bind mount) or a volume name.
    source: String,
    target: String,
    bind: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
    let Some(entries) = service["volumes"].as_sequence() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                let bind = source.starts_with('.') || source.starts_with('/');
                Mount {
                    source,
                    target,
                    bind,
                }
            }
            long => Mount {
                source: scalar(&long["source"]).unwrap_or_default(),
                target: scalar(&long["target"]).unwrap_or_default(),
                bind: long["type"].as_str() == Some("bind"),
            },
        })
        .collect()
}

/// The repository path that `container_path` of `service` is bind-mounted
/// from (the mount with the longest target that holds it).
fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    let container_path = Path::new(container_path);
    mounts(service)
        .into_iter()
        .filter(|mount| mount.bind)
        .filter_map(|mount| {
            let rest = container_path.strip_prefix(&mount.target).ok()?;
            Some((mount.target.len(), root().join(&mount.source).join(rest)))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, path)| normalize(&path))
}

/// The files of `dir` ending in `.extension`, in name order (as a shell's
/// `*.extension` and the PostgreSQL image's init scripts go).
fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

/// `path` with `.` and `..` resolved by the text alone.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The container ports a service publishes, and the host addresses.
fn published(service: &Value) -> Vec<(Option<String>, u16)> {
    strings(&service["ports"])
        .iter()
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let container = parts[parts.len() - 1].split('/').next().unwrap_or_default();
            let port = container
                .parse()
                .unwrap_or_else(|_| panic!("a container port in {entry}"));
            let host_ip = (parts.len() == 3).then(|| parts[0].to_owned());
            (host_ip, port)
        })
        .collect()
}

fn published_ports(service: &Value) -> BTreeSet<u16> {
    published(service)
        .into_iter()
        .map(|(_, port)| port)
        .collect()
}

/// The value after `flag` in `args` (`-p 4222`), or in `--flag=value` form.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|arg| arg == flag)
        .and_then(|at| args.get(at + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|arg| arg.strip_prefix(&format!("{flag}=")).map(str::to_owned))
        })
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("a port in {address}"))
}

/// `nats://host:port` or `http://host:port/...`: the host and the port.
fn host_and_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("a port in {url}"));
    (host.to_owned(), port.parse().expect("a port number"))
}

/// The nats-server version the tests run (scripts/env.sh).
fn tests_nats_version() -> String {
    read(root().join("scripts/env.sh"))
        .lines()
        .find_map(|line| line.strip_prefix("NATS_SERVER_VERSION="))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("NATS_SERVER_VERSION in scripts/env.sh")
}

/// The services that run the image this repository builds.
fn jetline_services(compose: &Value) -> Vec<(String, Value)> {
    services(compose)
        .into_iter()
        .filter(|(_, service)| service["build"].as_str() == Some("."))
        .collect()
}

fn service(compose: &Value, name: &str) -> Value {
    compose["services"][name].clone()
}

/// The service running the image `image` (without its tag).
fn service_running(compose: &Value, image: &str) -> (String, Value) {
    services(compose)
        .into_iter()
        .find(|(_, service)| {
            service["image"]
                .as_str()
                .is_some_and(|name| name.split(':').next() == Some(image))
        })
        .unwrap_or_else(|| panic!("a service runs {image}"))
}

/// The configuration file a Jetline service uses (a `.yaml` argument of its
/// command, else `JETLINE_CONFIG`), in the repository.
fn jetline_config_of(service: &Value) -> PathBuf {
    let command = strings(&service["command"]);
    let in_container = command
        .iter()
        .find(|arg| arg.ends_with(".yaml"))
        .cloned()
        .or_else(|| environment(service).get("JETLINE_CONFIG").cloned())
        .expect("a configuration file");
    host_path(service, &in_container)
        .unwrap_or_else(|| panic!("{in_container} is mounted from the repository"))
}

/// The configuration at `path` with the `JETLINE__*` variables of `env`
/// written into it as the `config` crate overlays them (keys lowercased,
/// `__` between them, values parsed), loaded in-process.
fn with_environment(path: &Path, env: &BTreeMap<String, String>) -> jetline::Config {
    let mut document: Value = serde_yaml_ng::from_str(&read(path)).expect("YAML");
    for (name, value) in env {
        let Some(key) = name.strip_prefix("JETLINE__") else {
            continue;
        };
        let keys: Vec<String> = key.split("__").map(str::to_lowercase).collect();
        let mut node = &mut document;
        for key in &keys {
            node = &mut node[key.as_str()];
        }
        *node = serde_yaml_ng::from_str(value).expect("a YAML scalar");
    }
    let text = serde_yaml_ng::to_string(&document).expect("YAML written");
    jetline::config::load_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// `jetline SUBCOMMAND --config CONFIG` with exactly `env`: its exit code,
/// and its output and errors together.
fn jetline_with(subcommand: &str, config: &Path, env: &BTreeMap<String, String>) -> (i32, String) {
    let output = Command::new(jetline_bin())
        .args([subcommand, "--config"])
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .unwrap_or_else(|err| panic!("jetline {subcommand} runs: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn check_with(config: &Path, env: &BTreeMap<String, String>) -> (i32, String) {
    jetline_with("check", config, env)
}

fn ready(config: &Path, env: &BTreeMap<String, String>) -> (i32, String) {
    jetline_with("ready", config, env)
}

#[test]
fn every_image_is_pinned_and_nats_is_the_version_the_tests_run() {
    let compose = compose();
    for (name, service) in services(&compose) {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: an image"));
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: {image} has a tag"));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: {image} is pinned to a version"
        );
    }
    let (_, nats) = service_running(&compose, "nats");
    let image = nats["image"].as_str().unwrap_or_default();
    let tag = image
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .unwrap_or_default();
    assert_eq!(
        tag.split('-').next(),
        Some(tests_nats_version().as_str()),
        "{image}: the tests run nats-server {}",
        tests_nats_version()
    );
    let built = jetline_services(&compose);
    assert!(!built.is_empty());
    for (name, service) in built {
        assert_eq!(
            service["image"].as_str(),
            Some(format!("jetline:{}", env!("CARGO_PKG_VERSION")).as_str()),
            "{name}: the image is tagged with the crate's version"
        );
    }
    for (stage, from) in dockerfile()
        .iter()
        .filter(|(instruction, _)| instruction == "FROM")
        .enumerate()
    {
        let image = from.1.split_whitespace().next().unwrap_or_default();
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "Dockerfile stage {stage}: {image} is pinned"
        );
    }
}

#[test]
fn every_file_the_compose_file_names_exists() {
    let compose = compose();
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|volumes| {
            volumes
                .keys()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut used = BTreeSet::new();
    for (name, service) in services(&compose) {
        if let Some(context) = service["build"].as_str() {
            assert!(
                root().join(context).join("Dockerfile").exists(),
                "{name}: build context {context} has a Dockerfile"
            );
        }
        for mount in mounts(&service) {
            if mount.bind {
                let path = root().join(&mount.source);
                assert!(path.exists(), "{name}: {} exists", mount.source);
                assert!(
                    normalize(&path).starts_with(root()),
                    "{name}: {} is in the repository",
                    mount.source
                );
            } else {
                assert!(
                    declared.contains(&mount.source),
                    "{name}: volume {} is declared",
                    mount.source
                );
                used.insert(mount.source);
            }
        }
        // Every path the service is given that lies in a bind mount exists:
        // configuration files, scripts, the dashboard.
        let arguments = strings(&service["command"])
            .into_iter()
            .chain(strings(&service["entrypoint"]))
            .chain(environment(&service).into_values());
        for argument in arguments.filter(|argument| argument.starts_with('/')) {
            if let Some(path) = host_path(&service, &argument) {
                assert!(
                    path.exists(),
                    "{name}: {argument} is {} in the repository, which exists",
                    path.display()
                );
            }
        }
    }
    assert_eq!(used, declared, "every declared volume is used");
}

#[test]
fn every_published_port_is_one_the_service_listens_on() {
    let compose = compose();
    for (name, service) in services(&compose) {
        for (host_ip, port) in published(&service) {
            assert_eq!(
                host_ip.as_deref(),
                Some("127.0.0.1"),
                "{name}: port {port} is published on loopback only"
            );
        }
    }

    // NATS: the clients' URL and the monitoring port of its health check.
    let (nats_name, nats) = service_running(&compose, "nats");
    let nats_args = strings(&nats["command"]);
    let client_port = flag_value(&nats_args, "-p").map_or(4222, |port| port_of(&port));
    let monitor_port = port_of(&flag_value(&nats_args, "-m").expect("monitoring enabled"));
    assert_eq!(
        published_ports(&nats),
        BTreeSet::from([client_port, monitor_port])
    );
    let health = strings(&nats["healthcheck"]["test"]);
    let health_url = health
        .iter()
        .find(|arg| arg.starts_with("http://"))
        .expect("a health URL");
    assert_eq!(host_and_port(health_url).1, monitor_port);
    assert!(
        nats_args.contains(&"-js".to_owned()),
        "JetStream is enabled"
    );

    // Jetline: the metrics port of its configuration, as the compose
    // environment sets it; the same port the image exposes.
    for (name, service) in jetline_services(&compose) {
        let env = environment(&service);
        let (host, port) = host_and_port(&env["JETLINE__NATS__URL"]);
        assert_eq!((host.as_str(), port), (nats_name.as_str(), client_port));
        let config = with_environment(&jetline_config_of(&service), &env);
        let published = published_ports(&service);
        if !published.is_empty() {
            assert_eq!(
                published,
                BTreeSet::from([config.metrics.listen.port()]),
                "{name}: the metrics port"
            );
            assert!(
                exposed().contains(&config.metrics.listen.port()),
                "{name}: the image exposes the metrics port"
            );
        }
    }

    // Prometheus and Grafana on the ports they listen on.
    let (_, prometheus) = service_running(&compose, "prom/prometheus");
    assert_eq!(
        published_ports(&prometheus),
        BTreeSet::from([prometheus_port(&prometheus)])
    );
    let (_, grafana) = service_running(&compose, "grafana/grafana");
    let grafana_port = environment(&grafana)
        .get("GF_SERVER_HTTP_PORT")
        .map_or(3000, |port| port.parse().expect("a port"));
    assert_eq!(published_ports(&grafana), BTreeSet::from([grafana_port]));
}

fn prometheus_port(prometheus: &Value) -> u16 {
    flag_value(&strings(&prometheus["command"]), "--web.listen-address")
        .map_or(9090, |address| port_of(&address))
}

#[test]
fn the_compose_environment_names_configuration_keys_and_checks() {
    let compose = compose();
    for (name, service) in jetline_services(&compose) {
        let config = jetline_config_of(&service);
        let env = environment(&service);
        assert!(env.keys().any(|key| key.starts_with("JETLINE__")));
        let (code, stderr) = check_with(&config, &env);
        assert_eq!(
            code,
            0,
            "{name}: jetline check {}:\n{stderr}",
            config.display()
        );
        // In-process too, each variable on its own: a key the raw types do
        // not have is an error naming it.
        for (key, value) in env.iter().filter(|(key, _)| key.starts_with("JETLINE__")) {
            with_environment(&config, &BTreeMap::from([(key.clone(), value.clone())]));
        }

        // The check tells a variable that names no key.
        let mut misspelt = env.clone();
        misspelt.insert(
            "JETLINE__METRICS__LISTN".to_owned(),
            "0.0.0.0:9464".to_owned(),
        );
        let (code, stderr) = check_with(&config, &misspelt);
        assert_eq!(code, 2, "{name}: a misspelt variable is refused");
        assert!(stderr.contains("metrics.listn"), "{stderr}");
    }
}

#[test]
fn the_compose_configuration_is_the_example_with_the_postgres_table() {
    let compose = compose();
    let (_, jetline) = jetline_services(&compose)
        .into_iter()
        .find(|(_, service)| !published_ports(service).is_empty())
        .expect("the Jetline service");
    let load = |path: &Path| -> Value { serde_yaml_ng::from_str(&read(path)).expect("YAML") };
    let actual = load(&jetline_config_of(&jetline));
    let mut expected = load(&root().join("config/jetline.yaml"));
    let projections = load(&root().join("config/projections.yaml"));

    // Only where the file lies and the table differ from the example.
    expected["schemas"]["dir"] = Value::from("../../schemas");
    expected["sinks"]["orders_table"] = projections["sinks"]["orders_table"].clone();
    let route = expected["routes"]
        .as_sequence_mut()
        .and_then(|routes| {
            routes
                .iter_mut()
                .find(|route| route["name"].as_str() == Some("all-orders"))
        })
        .expect("the route all-orders");
    route["to"]
        .as_sequence_mut()
        .expect("to")
        .push(Value::from("orders_table"));
    for key in expected.as_mapping().expect("a mapping").keys() {
        assert_eq!(
            actual[key],
            expected[key],
            "{}: config/jetline.yaml with the table of config/projections.yaml",
            key.as_str().unwrap_or_default()
        );
    }
    assert_eq!(actual, expected);
}

/// The stream definitions the `streams` service creates: name, subjects and
/// the JSON it sends.
fn stream_definitions(compose: &Value) -> Vec<(String, Vec<String>, String)> {
    let (_, streams) = service_running(compose, "natsio/nats-box");
    let command = strings(&streams["command"]);
    assert!(
        host_path(&streams, &command[1]).is_some_and(|script| read(script).contains("--config")),
        "the script creates each stream from its file"
    );
    let dir = host_path(&streams, command.last().expect("the directory"))
        .expect("the streams directory is mounted");
    files_with_extension(&dir, "json")
        .into_iter()
        .map(|file| {
            let text = read(&file);
            let definition: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let name = definition["name"].as_str().expect("a name").to_owned();
            assert_eq!(
                file.file_stem().and_then(|stem| stem.to_str()),
                Some(name.as_str()),
                "the file is named after its stream"
            );
            let subjects = definition["subjects"]
                .as_array()
                .expect("subjects")
                .iter()
                .filter_map(|subject| subject.as_str().map(str::to_owned))
                .collect();
            (name, subjects, text)
        })
        .collect()
}

/// A subject a JetStream sink's template renders (each placeholder one
/// token; `{source_subject}` one of the source's subjects).
fn rendered_sample(template: &str) -> String {
    regex::Regex::new(r"\{(\w+)\}")
        .expect("a pattern")
        .replace_all(template, |captures: &regex::Captures<'_>| {
            if &captures[1] == "source_subject" {
                "orders.sample".to_owned()
            } else {
                "sample".to_owned()
            }
        })
        .into_owned()
}

#[test]
fn the_streams_created_are_those_the_compose_configuration_reads_and_writes() {
    let compose = compose();
    let definitions = stream_definitions(&compose);
    let (_, jetline) = jetline_services(&compose)
        .into_iter()
        .next()
        .expect("a Jetline service");
    let config = with_environment(&jetline_config_of(&jetline), &environment(&jetline));
    let mut needed = BTreeSet::new();
    for (source_name, source) in &config.sources {
        let (_, subjects, _) = definitions
            .iter()
            .find(|(name, _, _)| *name == source.stream)
            .unwrap_or_else(|| panic!("source {source_name}: stream {} created", source.stream));
        for subject in &source.subjects {
            assert!(
                subjects.iter().any(
                    |pattern| jetline::template::subject_matches(pattern, subject)
                        || pattern == subject
                ),
                "source {source_name}: {subject} is in stream {}",
                source.stream
            );
        }
        needed.insert(source.stream.clone());
    }
    for (sink_name, sink) in &config.sinks {
        if let jetline::config::SinkKind::JetStream(target) = &sink.kind {
            let subject = rendered_sample(&target.subject);
            let (stream, _, _) = definitions
                .iter()
                .find(|(_, subjects, _)| {
                    subjects
                        .iter()
                        .any(|pattern| jetline::template::subject_matches(pattern, &subject))
                })
                .unwrap_or_else(|| panic!("sink {sink_name}: a stream captures {subject}"));
            needed.insert(stream.clone());
        }
    }
    let created: BTreeSet<String> = definitions.into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(created, needed, "every stream created is read or written");
    assert!(
        !created.contains(&config.dead_letter.stream),
        "Jetline creates its dead-letter stream itself"
    );
}

// ------------------------------------------------- the stack, without Docker

/// `env` with `key` (which must be there) set to `value`.
fn replaced(mut env: BTreeMap<String, String>, key: &str, value: &str) -> BTreeMap<String, String> {
    assert!(env.contains_key(key), "the compose environment sets {key}");
    env.insert(key.to_owned(), value.to_owned());
    env
}

async fn until_ready(config: &Path, env: &BTreeMap<String, String>) {
    eventually(Duration::from_secs(60), "jetline ready", || async {
        (ready(config, env).0 == 0).then_some(())
    })
    .await;
}

/// The compose stack with real servers in place of the containers: the
/// streams from the files the `streams` service reads, the table from the
/// init scripts of `postgres`, Jetline from its service's configuration and
/// environment (addresses swapped for the test servers'), the sample from
/// the `publish-sample` command. Every sink ends with what the sample gives.
#[tokio::test]
async fn the_compose_stack_runs_with_real_servers() {
    let compose = compose();
    let server = NatsServer::start();
    let client = server.client().await;
    for (name, _, definition) in stream_definitions(&compose) {
        // What `nats stream add --config FILE` asks of the server.
        let answer = client
            .request(format!("$JS.API.STREAM.CREATE.{name}"), definition.into())
            .await
            .expect("the server answers");
        let answer: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON");
        assert!(answer["error"].is_null(), "stream {name}: {answer}");
    }

    let database = Postgres::start_own();
    let db = database.client().await;
    let (_, postgres) = service_running(&compose, "postgres");
    let init = host_path(&postgres, "/docker-entrypoint-initdb.d").expect("init scripts mounted");
    let scripts = files_with_extension(&init, "sql");
    assert!(!scripts.is_empty());
    for script in scripts {
        db.batch_execute(&read(&script))
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", script.display()));
    }

    let jetline = service(&compose, "jetline");
    let config = jetline_config_of(&jetline);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut env = replaced(environment(&jetline), "JETLINE__NATS__URL", &server.url());
    env = replaced(env, "DATABASE_URL", database.url());
    env.remove("JETLINE_CONFIG");
    env.insert("JETLINE__METRICS__LISTEN".to_owned(), metrics.to_string());
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = Process::start_file(&config, &pairs, "warn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ready(&config, &env).0 != 0 {
        assert!(
            process.exit_status().is_none() && std::time::Instant::now() < deadline,
            "Jetline is not ready:\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The publisher's command, its container paths mapped to the repository.
    let publisher = service(&compose, "publish-sample");
    assert_eq!(strings(&publisher["entrypoint"]), ["sh"]);
    let arguments: Vec<PathBuf> = strings(&publisher["command"])
        .iter()
        .map(|arg| match arg.as_str() {
            "jetline" => jetline_bin(),
            path => host_path(&publisher, path).unwrap_or_else(|| panic!("{path} is mounted")),
        })
        .collect();
    let publisher_env = replaced(environment(&publisher), "JETLINE__NATS__URL", &server.url());
    let published = Command::new("sh")
        .args(&arguments)
        .envs(&publisher_env)
        .output()
        .expect("the publisher runs");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    let js = server.jetstream().await;
    for sink in ["orders_out", "order_audit", "order_summary", "orders_table"] {
        until_settled(&js, "ORDERS", sink).await;
    }
    // 6 orders events (each published binary and JSON, stored once), 4 invalid.
    assert_eq!(stream_count(&js, "ORDERS").await, 10);
    assert_eq!(stream_count(&js, "PROJECTIONS").await, 6);
    assert_eq!(stream_count(&js, "AUDIT").await, 6);
    // The invalid events, once per sink that wants them: the bad payload and
    // the bad envelope by all four, the unreadable line by all four (every
    // route takes its subject), the unknown type by order_audit alone.
    assert_eq!(stream_count(&js, "DLQ").await, 13);
    let rows: Vec<(String, String, i64)> = db
        .query(
            "SELECT id, status, total_cents FROM orders ORDER BY id",
            &[],
        )
        .await
        .expect("the table")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let row = |id: &str, status: &str, cents: i64| (id.to_owned(), status.to_owned(), cents);
    assert_eq!(
        rows,
        [
            row("order-1001", "shipped", 4599),
            row("order-1002", "cancelled", 1250),
            row("order-1003", "created", 1999),
            row("order-1004", "created", 550),
        ]
    );
    let summary = js.get_key_value("ORDER_SUMMARY").await.expect("the bucket");
    let document = summary
        .get("order-1003")
        .await
        .expect("read")
        .expect("order-1003");
    let document: serde_json::Value = serde_json::from_slice(&document).expect("JSON");
    assert_eq!(document["total_cents"], 1999, "upcast from v1");
    assert_eq!(process.terminate(), Some(0));
}

#[tokio::test]
async fn jetline_ready_follows_readyz_of_a_running_jetline() {
    let mut server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "READY", &["ready.>"]).await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = single_sink_yaml(
        &server.url(),
        "READY",
        "copy",
        "    type: jetstream\n    subject: \"ready_out.{aggregate_id}\"",
    )
    .replace("127.0.0.1:0", &metrics.to_string());
    let file = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(file.path(), &yaml).expect("written");
    let env = BTreeMap::new();

    let (code, output) = ready(file.path(), &env);
    assert_eq!(code, 1, "nothing listens yet: {output}");
    assert!(output.contains("no answer"), "{output}");

    let process = Process::start_logged(&yaml, &[], "error");
    until_ready(file.path(), &env).await;
    assert_eq!(ready(file.path(), &env).1.trim(), "ready");

    // NATS gone: /readyz answers 503, and the probe says why.
    server.stop();
    let output = eventually(Duration::from_secs(30), "not ready", || async {
        let (code, output) = ready(file.path(), &env);
        (code == 1).then_some(output)
    })
    .await;
    assert!(output.contains("503"), "{output}");
    assert!(output.contains("not connected to NATS"), "{output}");
    server.start_again();
    until_ready(file.path(), &env).await;

    // The metrics address overridden from the environment is the one probed.
    let elsewhere = BTreeMap::from([(
        "JETLINE__METRICS__LISTEN".to_owned(),
        format!("127.0.0.1:{}", free_port()),
    )]);
    assert_eq!(ready(file.path(), &elsewhere).0, 1);
    drop(process);
}

// ----------------------------------------------------- Prometheus, Grafana

#[test]
fn prometheus_runs_the_shipped_configuration_and_scrapes_the_compose_jetline() {
    let compose = compose();
    let (_, prometheus) = service_running(&compose, "prom/prometheus");
    let in_container =
        flag_value(&strings(&prometheus["command"]), "--config.file").expect("--config.file");
    let file = host_path(&prometheus, &in_container).expect("the configuration is mounted");
    assert_eq!(file, root().join("config/prometheus/prometheus.yml"));
    let (code, output) = promtool(&["check", "config", &file.display().to_string()], None);
    assert_eq!(code, 0, "promtool check config:\n{output}");
    assert!(
        output.contains("alerts.yml"),
        "the rules are loaded: {output}"
    );

    let config: Value = serde_yaml_ng::from_str(&read(&file)).expect("YAML");
    let targets: Vec<String> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|group| strings(&group["targets"]))
        .collect();
    assert!(!targets.is_empty());
    let jetline = service(&compose, "jetline");
    let metrics = with_environment(&jetline_config_of(&jetline), &environment(&jetline))
        .metrics
        .listen;
    for target in targets {
        let (host, port) = target.rsplit_once(':').expect("host:port");
        assert_eq!(host, "jetline", "{target} is the compose service");
        assert_eq!(port.parse::<u16>().ok(), Some(metrics.port()), "{target}");
    }
}

#[test]
fn grafana_is_provisioned_with_prometheus_and_the_dashboard() {
    let compose = compose();
    let (_, grafana) = service_running(&compose, "grafana/grafana");
    let provisioning = |kind: &str| -> Vec<Value> {
        let dir = host_path(&grafana, &format!("/etc/grafana/provisioning/{kind}"))
            .unwrap_or_else(|| panic!("{kind} provisioning is mounted"));
        let mut documents = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the provisioning folder") {
            let path = entry.expect("an entry").path();
            let document: Value = serde_yaml_ng::from_str(&read(&path)).expect("YAML");
            assert_eq!(
                document["apiVersion"].as_u64(),
                Some(1),
                "{}",
                path.display()
            );
            documents.push(document);
        }
        documents
    };

    let dashboard_file = root().join("config/grafana/jetline-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&dashboard_file)).expect("the dashboard is JSON");
    let wanted_type = dashboard["templating"]["list"]
        .as_array()
        .and_then(|variables| variables.iter().find(|v| v["type"] == "datasource"))
        .and_then(|variable| variable["query"].as_str())
        .expect("the dashboard's data-source variable")
        .to_owned();

    let datasources: Vec<Value> = provisioning("datasources")
        .iter()
        .flat_map(|document| {
            document["datasources"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(datasources.len(), 1);
    let datasource = &datasources[0];
    assert_eq!(datasource["type"].as_str(), Some(wanted_type.as_str()));
    assert_eq!(datasource["isDefault"].as_bool(), Some(true));
    let (prometheus_name, prometheus) = service_running(&compose, "prom/prometheus");
    let (host, port) = host_and_port(datasource["url"].as_str().expect("a URL"));
    assert_eq!(
        (host, port),
        (prometheus_name, prometheus_port(&prometheus)),
        "the data source is the compose Prometheus"
    );

    let providers: Vec<Value> = provisioning("dashboards")
        .iter()
        .flat_map(|document| {
            document["providers"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(providers.len(), 1);
    let folder = providers[0]["options"]["path"].as_str().expect("a path");
    let loaded = host_path(&grafana, &format!("{folder}/jetline-dashboard.json"));
    assert_eq!(
        loaded,
        Some(dashboard_file.clone()),
        "the provider loads it"
    );
    let home = environment(&grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    assert_eq!(
        host_path(&grafana, &home),
        Some(dashboard_file),
        "the home page"
    );
}

#[test]
fn the_services_start_in_order() {
    let compose = compose();
    let condition = |service: &str, on: &str| -> String {
        compose["services"][service]["depends_on"][on]["condition"]
            .as_str()
            .unwrap_or_else(|| panic!("{service} waits for {on}"))
            .to_owned()
    };
    let (nats, _) = service_running(&compose, "nats");
    let (streams, _) = service_running(&compose, "natsio/nats-box");
    let (postgres, _) = service_running(&compose, "postgres");
    assert_eq!(condition(&streams, &nats), "service_healthy");
    assert_eq!(condition("jetline", &nats), "service_healthy");
    assert_eq!(
        condition("jetline", &streams),
        "service_completed_successfully"
    );
    assert_eq!(condition("jetline", &postgres), "service_healthy");
    assert_eq!(
        condition("publish-sample", &streams),
        "service_completed_successfully"
    );
    assert_eq!(condition("publish-sample", "jetline"), "service_healthy");

    // A service waited for as healthy has a health check: its own, or the
    // image's HEALTHCHECK for the one built here.
    let has_healthcheck = dockerfile().iter().any(|(i, _)| i == "HEALTHCHECK");
    for (name, service) in services(&compose) {
        let Some(depends) = service["depends_on"].as_mapping() else {
            continue;
        };
        for (on, how) in depends {
            let on = on.as_str().expect("a service");
            let target = service_of(&compose, on);
            match how["condition"].as_str() {
                Some("service_healthy") => assert!(
                    target["healthcheck"].is_mapping()
                        || (target["build"].as_str() == Some(".") && has_healthcheck),
                    "{name} waits for {on}, which has a health check"
                ),
                Some("service_completed_successfully") => assert!(
                    target["restart"].is_null() || target["restart"].as_str() == Some("no"),
                    "{on} is a one-shot"
                ),
                _ => {}
            }
        }
    }
}

fn service_of(compose: &Value, name: &str) -> Value {
    let found = service(compose, name);
    assert!(found.is_mapping(), "{name} is a service");
    found
}

// ------------------------------------------------------------- Dockerfile

/// The Dockerfile's instructions (name upper-cased, arguments), comments
/// dropped and continued lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(root().join("Dockerfile")).lines() {
        let line = line.trim();
        if line.starts_with('#') || (current.is_empty() && line.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (name, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((name.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The Dockerfile's stages, each its instructions after its FROM.
fn stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in dockerfile() {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push(instruction);
    }
    stages
}

fn all<'a>(stage: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(instruction, _)| instruction == name)
        .map(|(_, rest)| rest.as_str())
        .collect()
}

/// A COPY's sources and destination (no `--from`).
fn copy_parts(arguments: &str) -> (Vec<&str>, &str) {
    let words: Vec<&str> = arguments
        .split_whitespace()
        .filter(|word| !word.starts_with("--"))
        .collect();
    let (destination, sources) = words.split_last().expect("a COPY destination");
    (sources.to_vec(), destination)
}

/// The ports the image exposes.
fn exposed() -> BTreeSet<u16> {
    all(&dockerfile(), "EXPOSE")
        .iter()
        .flat_map(|ports| ports.split_whitespace())
        .map(|port| {
            port.split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("a port")
        })
        .collect()
}

#[test]
fn the_dockerfile_caches_dependencies_and_runs_unprivileged_with_a_readyz_health_check() {
    let stages = stages();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], stages.last().expect("a runtime stage"));

    // The dependencies are built from the manifests alone: everything before
    // the first cargo build copies only Cargo.toml and Cargo.lock files.
    let first_build = build
        .iter()
        .position(|(i, rest)| i == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build");
    for (instruction, rest) in &build[..first_build] {
        if instruction == "COPY" {
            for source in copy_parts(rest).0 {
                let file = Path::new(source).file_name().and_then(|f| f.to_str());
                assert!(
                    matches!(file, Some("Cargo.toml" | "Cargo.lock")),
                    "{source} in the dependency layer"
                );
            }
        }
    }
    let last_build = build
        .iter()
        .rposition(|(i, rest)| i == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        last_build > first_build,
        "Jetline is built after its dependencies"
    );
    assert!(
        build[first_build..last_build]
            .iter()
            .any(|(i, rest)| i == "COPY" && copy_parts(rest).0.contains(&"pipeline")),
        "the sources come after the dependency layer"
    );
    let final_build = &build[last_build].1;
    assert!(final_build.contains("cargo build --release --locked --bin jetline"));
    assert!(
        final_build.contains("touch") && final_build.contains("pipeline/src/lib.rs"),
        "the copied sources are newer than the stubs"
    );
    stub_step_gives_a_manifest_cargo_reads(&build[..first_build]);

    // The runtime stage: the binary, the examples where their relative
    // schema path finds the schemas, checked at build time.
    let copies: Vec<(Vec<&str>, &str)> = all(runtime, "COPY").into_iter().map(copy_parts).collect();
    let destination_of = |source: &str| -> PathBuf {
        let (_, destination) = copies
            .iter()
            .find(|(sources, _)| sources.contains(&source))
            .unwrap_or_else(|| panic!("{source} is copied into the image"));
        if destination.ends_with('/') {
            Path::new(destination).join(Path::new(source).file_name().expect("a file"))
        } else {
            PathBuf::from(destination)
        }
    };
    let config_in_image = all(runtime, "ENV")
        .iter()
        .find_map(|env| env.strip_prefix("JETLINE_CONFIG="))
        .expect("JETLINE_CONFIG is set");
    assert_eq!(
        destination_of("config/jetline.yaml"),
        PathBuf::from(config_in_image)
    );
    let example = jetline::config::load(&root().join("config/jetline.yaml")).expect("the example");
    let schemas_relative = example
        .schemas
        .dir
        .strip_prefix(root().join("config"))
        .expect("relative to the file");
    assert_eq!(
        normalize(
            &Path::new(config_in_image)
                .parent()
                .expect("a folder")
                .join(schemas_relative)
        ),
        destination_of("schemas"),
        "schemas.dir of the example finds the schemas in the image"
    );
    assert!(
        all(runtime, "RUN")
            .iter()
            .any(|run| run.contains("jetline check")),
        "the shipped configuration is checked at build time"
    );
    assert_eq!(all(runtime, "ENTRYPOINT"), [r#"["jetline"]"#]);
    assert!(exposed().contains(&example.metrics.listen.port()));
    let user = all(runtime, "USER");
    let user = user.last().expect("a USER");
    assert!(*user != "root" && *user != "0", "runs unprivileged");
    assert!(
        all(runtime, "RUN")
            .iter()
            .any(|run| run.contains("useradd") && run.contains(user)),
        "the user {user} exists"
    );
    let healthcheck = all(runtime, "HEALTHCHECK");
    let healthcheck = healthcheck.first().expect("a HEALTHCHECK");
    let probe = healthcheck
        .split_once("CMD")
        .map(|(_, command)| command.trim())
        .expect("HEALTHCHECK CMD");
    assert!(
        probe == r#"["jetline", "ready"]"# || probe.contains("/readyz"),
        "the health check asks /readyz: {probe}"
    );

    // Every COPY source exists and the build context lets it through.
    let allowed = dockerignore_allowlist();
    for stage in &stages {
        for copy in all(stage, "COPY") {
            if copy.starts_with("--from") {
                continue;
            }
            for source in copy_parts(copy).0 {
                assert!(root().join(source).exists(), "COPY source {source} exists");
                assert!(
                    allowed
                        .iter()
                        .any(|entry| Path::new(source).starts_with(entry)),
                    "{source} is let through by .dockerignore"
                );
            }
        }
    }
}

/// The paths `.dockerignore` lets through: it must exclude everything (`*`)
/// and list each exception as `!path`.
fn dockerignore_allowlist() -> Vec<String> {
    let text = read(root().join(".dockerignore"));
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "an allowlist");
    patterns[1..]
        .iter()
        .map(|pattern| {
            pattern
                .strip_prefix('!')
                .unwrap_or_else(|| panic!("{pattern}: only exceptions after *"))
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

/// Runs the build stage's steps before the dependency build (the manifests
/// copied, the stub targets made) in a temporary folder, and asks cargo to
/// read the result: a target the manifest names that the stubs lack fails
/// here as it would fail `docker build`.
fn stub_step_gives_a_manifest_cargo_reads(steps: &[(String, String)]) {
    let dir = tempfile::tempdir().expect("a temporary build folder");
    for (instruction, rest) in steps {
        match instruction.as_str() {
            "COPY" => {
                let (sources, destination) = copy_parts(rest);
                for source in sources {
                    let target = if destination.ends_with('/') {
                        dir.path()
                            .join(destination)
                            .join(Path::new(source).file_name().expect("a file"))
                    } else {
                        dir.path().join(destination)
                    };
                    std::fs::create_dir_all(target.parent().expect("a folder")).expect("mkdir");
                    std::fs::copy(root().join(source), &target).expect("copied");
                }
            }
            "RUN" => {
                let status = Command::new("sh")
                    .args(["-c", rest])
                    .current_dir(dir.path())
                    .status()
                    .expect("sh runs");
                assert!(status.success(), "RUN {rest}");
            }
            "FROM" | "WORKDIR" | "ENV" | "ARG" => {}
            other => panic!("{other} before the dependency build"),
        }
    }
    let output = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["fetch", "--locked", "--offline"])
        .current_dir(dir.path())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo reads the stubbed manifests:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
