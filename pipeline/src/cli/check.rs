//! `jetline check`: loads the configuration, compiles the schemas, checks the
//! routes, and prints what would run. No connection to NATS.

use std::fmt::Write as _;

use crate::{Prepared, config::SinkKind};

/// The summary printed by `check`: sources, sinks with their effective
/// consumer settings, consumers, and event types with their versions.
pub fn summary(prepared: &Prepared) -> String {
    let config = &prepared.config;
    let mut out = String::new();
    let _ = writeln!(out, "configuration ok");
    let _ = writeln!(out, "sources:");
    for (name, source) in &config.sources {
        let _ = writeln!(
            out,
            "  {name}: stream {} subjects {:?}",
            source.stream, source.subjects
        );
    }
    let _ = writeln!(out, "sinks:");
    for (name, sink) in &config.sinks {
        let target = match &sink.kind {
            SinkKind::JetStream(js) => format!(
                "subject {} format {} headers {}",
                js.subject, js.format, js.headers
            ),
            SinkKind::Custom => "registered by the embedding program".to_owned(),
            SinkKind::Kv(kv) => format!(
                "bucket {} key {} on {:?}",
                kv.bucket,
                kv.key,
                kv.on.keys().collect::<Vec<_>>()
            ),
            SinkKind::Postgres(pg) => format!(
                "url from ${}, batch {} events or {}, on {:?}",
                pg.url_env,
                pg.batch.max_events,
                humantime::format_duration(pg.batch.max_wait),
                pg.on.keys().collect::<Vec<_>>()
            ),
            SinkKind::Http(http) => format!(
                "POST {} (timeout {})",
                match (&http.url, &http.url_env) {
                    (Some(url), _) => url.clone(),
                    (None, variable) => format!("${}", variable.as_deref().unwrap_or_default()),
                },
                humantime::format_duration(http.timeout)
            ),
        };
        let c = &sink.consumer;
        let _ = writeln!(out, "  {name}: {} {target}", sink.kind.type_name());
        let _ = writeln!(
            out,
            "    ack_wait {}, max_ack_pending {}, ordering {}, concurrency {}, on_dead_letter {}",
            humantime::format_duration(c.ack_wait),
            c.max_ack_pending,
            c.ordering,
            c.concurrency,
            c.on_dead_letter,
        );
        let backoff: Vec<String> = c
            .retry
            .backoff
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        let _ = writeln!(
            out,
            "    retry: max_attempts {}, backoff [{}], jitter {}",
            c.retry.max_attempts,
            backoff.join(", "),
            c.retry.jitter
        );
        let _ = writeln!(
            out,
            "    replicas: takeover_after {}, partitions {}",
            humantime::format_duration(c.takeover_after),
            c.partitions
        );
        if let Some(version) = sink.schema_version {
            let _ = writeln!(out, "    schema_version {version}");
        }
    }
    let _ = writeln!(out, "consumers:");
    for pipeline in &config.pipelines {
        let routes: Vec<&str> = pipeline
            .routes
            .iter()
            .map(|&index| config.routes[index].name.as_str())
            .collect();
        let _ = writeln!(
            out,
            "  {}: stream {} filter {:?} routes {:?}",
            pipeline.durable_name, pipeline.stream, pipeline.filter_subjects, routes
        );
    }
    let _ = writeln!(out, "event types:");
    for (event_type, versions) in prepared.decoder.registry().event_types() {
        let _ = writeln!(out, "  {event_type}: versions {versions:?}");
    }
    let _ = writeln!(
        out,
        "dead letters: stream {} subjects {}.>",
        config.dead_letter.stream, config.dead_letter.subject_prefix
    );
    if let Some(tracing) = &config.tracing {
        let _ = writeln!(
            out,
            "traces: OTLP to {} as {}, sample_ratio {}",
            tracing.traces_url, tracing.service_name, tracing.sample_ratio
        );
    }
    upcasters(&mut out, prepared);
    out
}

/// Each chain with its hops and steps, then the checks' warnings.
fn upcasters(out: &mut String, prepared: &Prepared) {
    let chains = prepared.upcasters.chains();
    if chains.is_empty() {
        let _ = writeln!(out, "upcasters: none");
    } else {
        let _ = writeln!(out, "upcasters:");
    }
    for (event_type, hops) in chains {
        // The path from the oldest version; other versions join it on the way.
        let mut versions: Vec<String> = Vec::new();
        let mut current = hops.first().map(|hop| hop.from);
        while let Some(version) = current {
            versions.push(format!("v{version}"));
            current = hops
                .iter()
                .find(|hop| hop.from == version)
                .map(|hop| hop.to);
        }
        let _ = writeln!(out, "  {event_type}: {}", versions.join(" -> "));
        for hop in hops {
            let _ = writeln!(out, "    v{} -> v{}:", hop.from, hop.to);
            for step in hop.describe() {
                let _ = writeln!(out, "      {step}");
            }
        }
    }
    let warnings = prepared.upcasters.warnings();
    if !warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for warning in warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
}
