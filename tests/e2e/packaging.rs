//! The container files, checked by reading them (no Docker engine here): the
//! compose file wires Jetline to a JetStream-enabled NATS, mounts files that
//! exist, and its configuration passes `jetline check` with the compose
//! environment; the Dockerfile builds the locked release binary and runs it
//! unprivileged.

use std::{collections::BTreeMap, process::Command};

use serde_yaml_ng::Value;

use crate::support::*;

fn compose() -> Value {
    let text =
        std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_jetline_against_jetstream_with_files_that_exist() {
    let compose = compose();
    let services = &compose["services"];
    assert!(
        strings(&services["nats"]["command"]).contains(&"-js".to_owned()),
        "JetStream enabled"
    );

    let jetline = &services["jetline"];
    assert_eq!(jetline["build"].as_str(), Some("."));
    let environment: BTreeMap<String, String> = jetline["environment"]
        .as_mapping()
        .expect("environment mapping")
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect();
    let url = &environment["JETLINE__NATS__URL"];
    let host = url
        .trim_start_matches("nats://")
        .split(':')
        .next()
        .unwrap_or_default();
    assert!(services[host].is_mapping(), "{url} names a compose service");
    let listen_port = environment["JETLINE__METRICS__LISTEN"]
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        strings(&jetline["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{listen_port}"))),
        "the metrics port is published"
    );

    // Every mounted host path exists; map container paths back to the repo.
    let mut mounts = BTreeMap::new();
    for volume in strings(&jetline["volumes"]) {
        let mut parts = volume.split(':');
        let (host, container) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let host_path = root().join(host.trim_start_matches("./"));
        assert!(host_path.exists(), "{host} exists");
        mounts.insert(container.to_owned(), host_path);
    }
    let command = strings(&jetline["command"]);
    let config_in_container = &command[command
        .iter()
        .position(|a| a == "--config")
        .expect("--config")
        + 1];
    let config = &mounts[config_in_container];

    // The configuration checks with the compose environment applied.
    let schemas = &mounts[&environment["JETLINE__SCHEMAS__DIR"]];
    let output = Command::new(jetline_bin())
        .args(["check", "--config"])
        .arg(config)
        .env("JETLINE__NATS__URL", url)
        .env("JETLINE__SCHEMAS__DIR", schemas)
        .env(
            "JETLINE__METRICS__LISTEN",
            &environment["JETLINE__METRICS__LISTEN"],
        )
        .output()
        .expect("check runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dockerfile_builds_the_locked_release_and_runs_unprivileged() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let instructions: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            line.split_once(' ')
                .map(|(i, rest)| (i.to_uppercase(), rest.trim().to_owned()))
        })
        .collect();
    let all = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "a build stage and a runtime stage");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked --bin jetline"))
    );
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let sources: Vec<&str> = copy.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(root().join(source).exists(), "COPY source {source} exists");
        }
    }
    assert_eq!(all("ENTRYPOINT"), [r#"["jetline"]"#]);
    assert!(all("EXPOSE").contains(&"9464"));
    let user = all("USER");
    assert!(
        user.last().is_some_and(|u| *u != "root" && *u != "0"),
        "runs unprivileged"
    );
}
