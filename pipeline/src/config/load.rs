//! Reads the YAML file, overlays `JETLINE__<KEY>__<KEY>` environment variables
//! (with the `config` crate), and hands the result to `validate`.
//!
//! Parse errors carry their key path (`serde_path_to_error`) and, where the key
//! can be found in the file, its line.

use std::path::Path;

use super::{Config, ConfigError, ConfigErrors, Origin, raw::RawConfig, validate};

/// Environment variables `JETLINE__NATS__URL=...` override file values.
const ENV_PREFIX: &str = "JETLINE";
const ENV_SEPARATOR: &str = "__";

/// Keys whose values are secrets: never accepted from the file itself.
const SECRET_KEYS: &[(&str, &str)] = &[("password", "password_file"), ("token", "token_file")];

/// Loads, overlays the environment, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read {}: {err}", path.display()),
        )])
    })?;
    let mut config = load_str(&text)?;
    // Relative paths in the file are relative to the file, as a user expects.
    if let Some(base) = path.parent() {
        let nats = &mut config.nats;
        let tls = nats.tls.as_mut();
        let paths = [
            Some(&mut config.schemas.dir),
            nats.password_file.as_mut(),
            nats.token_file.as_mut(),
            nats.creds_file.as_mut(),
            nats.nkey_seed_file.as_mut(),
        ]
        .into_iter()
        .chain(
            tls.into_iter()
                .flat_map(|tls| [tls.ca.as_mut(), tls.cert.as_mut(), tls.key.as_mut()]),
        );
        for relative in paths.flatten().filter(|path| path.is_relative()) {
            *relative = base.join(&*relative);
        }
    }
    Ok(config)
}

/// As [`load`], from the text of a file (paths stay as written).
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    let env = std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    load_with_env(text, &env)
}

/// As [`load_str`], with `env` in place of the process environment.
fn load_with_env(text: &str, env: &config::Map<String, String>) -> Result<Config, ConfigErrors> {
    let origin = Origin {
        file: None,
        text: text.to_owned(),
    };
    let locator = Locator {
        text: origin.text.clone(),
        env: env.clone(),
    };
    let locate = |error: ConfigError| locator.locate(error);
    let file_only = layered(text, None).map_err(|err| parse_error(text, &err.to_string()))?;
    check_no_secrets_in_file(&file_only).map_err(|errors| relocate(errors, locate))?;

    let mut merged = layered(text, Some(env)).map_err(|err| parse_error(text, &err.to_string()))?;
    secrets_verbatim(&mut merged, |name| env.get(name).cloned());
    let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        relocate(one_error(&path, err.into_inner().to_string()), locate)
    })?;
    let mut config = validate(raw).map_err(|errors| relocate(errors, locate))?;
    config.locator = locator;
    Ok(config)
}

/// Where a key path was set: a value from the environment is named by its
/// variable, one from the file by its line. Kept in the [`Config`] for the
/// checks that need the schemas (routes, sink rules, upcasters).
#[derive(Debug, Clone, Default)]
pub struct Locator {
    text: String,
    env: config::Map<String, String>,
}

impl Locator {
    pub fn locate(&self, error: ConfigError) -> ConfigError {
        match env_variable(&self.env, &error.path) {
            Some(variable) => ConfigError {
                variable: Some(variable),
                ..error
            },
            None => ConfigError {
                line: error.line.or_else(|| locate_line(&self.text, &error.path)),
                ..error
            },
        }
    }
}

/// The file, with `env` on top when given, as a JSON value.
fn layered(
    text: &str,
    env: Option<&config::Map<String, String>>,
) -> Result<serde_json::Value, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml));
    if let Some(env) = env {
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .source(Some(env.clone()))
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true),
        );
    }
    builder.build()?.try_deserialize()
}

/// The secrets as their variables hold them: the `config` crate would read
/// `JETLINE__NATS__PASSWORD=0042` as the number 42.
fn secrets_verbatim(merged: &mut serde_json::Value, variable: impl Fn(&str) -> Option<String>) {
    for (key, _) in SECRET_KEYS {
        let name = format!(
            "{ENV_PREFIX}{ENV_SEPARATOR}NATS{ENV_SEPARATOR}{}",
            key.to_uppercase()
        );
        if let (Some(value), Some(nats)) = (
            variable(&name),
            merged.get_mut("nats").and_then(|nats| nats.as_object_mut()),
        ) {
            nats.insert((*key).to_owned(), serde_json::Value::String(value));
        }
    }
}

fn check_no_secrets_in_file(file: &serde_json::Value) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = SECRET_KEYS
        .iter()
        .filter(|(key, _)| file.pointer(&format!("/nats/{key}")).is_some())
        .map(|(key, file_key)| {
            ConfigError::new(
                format!("nats.{key}"),
                format!(
                    "secrets are not read from the config file: set JETLINE__NATS__{} or nats.{file_key}",
                    key.to_uppercase()
                ),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The `JETLINE__*` variable that sets `path`, when it is set.
fn env_variable(env: &config::Map<String, String>, path: &str) -> Option<String> {
    if path.is_empty() || path.contains('[') {
        return None;
    }
    let keys: Vec<String> = path.split('.').map(str::to_uppercase).collect();
    let name = format!("{ENV_PREFIX}{ENV_SEPARATOR}{}", keys.join(ENV_SEPARATOR));
    env.contains_key(&name).then_some(name)
}

/// A YAML error, with the key path and line of a duplicated key (the YAML
/// parser names it in Rust's debug form, without its path).
fn parse_error(text: &str, message: &str) -> ConfigErrors {
    let duplicate = message
        .split_once("duplicated key in mapping")
        .and_then(|(before, after)| {
            let key = before.split_once("String(\"")?.1.split_once("\")")?.0;
            let line: usize = after
                .split_once(" line ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((key.to_owned(), line))
        });
    match duplicate {
        Some((key, line)) => ConfigErrors(vec![ConfigError {
            line: Some(line),
            ..ConfigError::new(
                path_at_line(text, line, &key),
                format!("{key:?} is given twice; each key may appear once"),
            )
        }]),
        None => one_error("", message.to_owned()),
    }
}

/// The dotted path of `key` written on the 1-based `line` of block-style
/// YAML: the keys above it with less indentation, then `key`.
fn path_at_line(text: &str, line: usize, key: &str) -> String {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let key_of = |line: &str| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        trimmed
            .split_once(':')
            .map(|(key, _)| key.trim().trim_matches(['"', '\'']).to_owned())
    };
    let lines: Vec<&str> = text.lines().take(line).collect();
    let Some(last) = lines.last() else {
        return key.to_owned();
    };
    let mut path = vec![key.to_owned()];
    if key_of(last).is_some_and(|first| first != key) {
        // A flow mapping: the duplicated key sits inside the line's value.
        path.push(key_of(last).unwrap_or_default());
    }
    let mut column = indent(last);
    for text in lines.iter().rev().skip(1) {
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || indent(text) >= column {
            continue;
        }
        column = indent(text);
        if let Some(parent) = key_of(text) {
            path.push(parent);
        }
    }
    path.reverse();
    path.join(".")
}

fn one_error(path: &str, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::new(path, message)])
}

fn relocate(
    errors: ConfigErrors,
    locate: impl Fn(ConfigError) -> ConfigError + Copy,
) -> ConfigErrors {
    ConfigErrors(errors.0.into_iter().map(locate).collect())
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|part| !part.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(index) = index.parse() {
                out.push(Segment::Index(index));
            }
            rest = tail.trim_start_matches('[');
        }
    }
    out
}

/// The 1-based line of a key path in block-style YAML; the deepest key found.
/// A best effort for messages: `None` when even the first key is not found.
fn locate_line(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let segments = segments(path);
    let mut at = Place {
        start: 0,
        parent_column: None,
        found: None,
    };
    let mut next = 0;
    while next < segments.len() {
        // A key may hold dots itself (an event type such as
        // `orders.OrderCreated`): the longest run of keys written as one
        // key comes first.
        let keys = segments[next..]
            .iter()
            .take_while(|segment| matches!(segment, Segment::Key(_)))
            .count();
        let hit = match keys {
            0 => find_segment(&lines, &segments[next], &at).map(|hit| (hit, 1)),
            _ => (1..=keys).rev().find_map(|run| {
                let key = segments[next..next + run]
                    .iter()
                    .filter_map(|segment| match segment {
                        Segment::Key(key) => Some(*key),
                        Segment::Index(_) => None,
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                find_segment(&lines, &Segment::Key(&key), &at).map(|hit| (hit, run))
            }),
        };
        let Some(((number, column, start), used)) = hit else {
            break;
        };
        at = Place {
            start,
            parent_column: Some(column),
            found: Some(number),
        };
        next += used;
    }
    at.found.map(|number| number + 1)
}

/// How far [`locate_line`] has come: where the next key is looked for,
/// below which column, and the line of the last key found.
struct Place {
    start: usize,
    parent_column: Option<usize>,
    found: Option<usize>,
}

/// The line, column and next line to search of `segment` inside `at`.
fn find_segment(lines: &[&str], segment: &Segment, at: &Place) -> Option<(usize, usize, usize)> {
    let content = |line: &str| {
        let trimmed = line.trim_start();
        !(trimmed.is_empty() || trimmed.starts_with('#'))
    };
    let indent = |line: &str| line.len() - line.trim_start().len();
    let inside = |column: usize| at.parent_column.is_none_or(|p| column > p);
    for (number, line) in lines.iter().enumerate().skip(at.start) {
        if !content(line) {
            continue;
        }
        // The key may follow a list dash on the line where an item starts.
        let column = if number == at.start && at.found == Some(number) {
            at.parent_column.map_or(0, |p| p + 2)
        } else {
            indent(line)
        };
        if number != at.start && !inside(indent(line)) {
            return None;
        }
        let rest = line.get(column..).unwrap_or_default();
        match segment {
            Segment::Key(key) => {
                let rest = rest.trim_start_matches("- ");
                let key_column = line.len() - rest.len();
                let rest = rest.trim_start_matches(['"', '\'']);
                if rest.starts_with(key)
                    && rest[key.len()..]
                        .trim_start_matches(['"', '\''])
                        .starts_with(':')
                {
                    return Some((number, key_column, number + 1));
                }
            }
            Segment::Index(wanted) => {
                let items = lines[at.start..=number]
                    .iter()
                    .filter(|l| content(l) && l.trim_start().starts_with("- "))
                    .filter(|l| inside(indent(l)))
                    .count();
                if rest.trim_start().starts_with("- ") && items == wanted + 1 {
                    return Some((number, indent(line), number));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
nats:
  url: nats://x
sinks:
  orders_out:
    type: jetstream
    subjet: a.b
routes:
  - name: first
    from: orders
  - name: second
    to: [x]
";

    #[test]
    fn locates_keys_and_list_items() {
        assert_eq!(locate_line(YAML, "nats.url"), Some(2));
        assert_eq!(locate_line(YAML, "sinks.orders_out.subjet"), Some(6));
        assert_eq!(locate_line(YAML, "sinks.orders_out.missing"), Some(4));
        assert_eq!(locate_line(YAML, "routes[1].to"), Some(11));
        assert_eq!(locate_line(YAML, "routes[0].from"), Some(9));
        assert_eq!(locate_line(YAML, "nowhere"), None);
    }

    #[test]
    fn locates_keys_that_hold_dots() {
        let yaml = "\
sinks:
  counts:
    on:
      orders.OrderCreated:
        set: { last: event_id }
upcasters:
  orders.OrderCreated:
    - from: 1
      to: 2
    - from: 2
      steps:
        - rename: { from: a, to: b }
";
        assert_eq!(
            locate_line(yaml, "sinks.counts.on.orders.OrderCreated"),
            Some(4)
        );
        assert_eq!(
            locate_line(yaml, "sinks.counts.on.orders.OrderCreated.set"),
            Some(5)
        );
        assert_eq!(
            locate_line(yaml, "upcasters.orders.OrderCreated[1].steps"),
            Some(11)
        );
        assert_eq!(
            locate_line(yaml, "upcasters.orders.OrderCreated[1].steps[0].rename"),
            Some(12)
        );
        // Not written: the deepest key that is.
        assert_eq!(locate_line(yaml, "upcasters.orders.OrderShipped"), Some(6));
    }

    #[test]
    fn errors_found_after_loading_are_located_too() {
        let config = load_str(&format!(
            "{BASE}upcasters:\n  orders.OrderCreated:\n    - from: 1\n"
        ))
        .expect("loads");
        let error = config.locator.locate(ConfigError::new(
            "upcasters.orders.OrderCreated[0].from",
            "a problem only the schemas show",
        ));
        assert_eq!(error.line, Some(10), "{error}");
    }

    #[test]
    fn secrets_from_the_environment_stay_text() {
        let mut merged =
            serde_json::json!({ "nats": { "url": "x", "password": 42, "token": true } });
        secrets_verbatim(&mut merged, |name| match name {
            "JETLINE__NATS__PASSWORD" => Some("0042".to_owned()),
            "JETLINE__NATS__TOKEN" => Some("true".to_owned()),
            _ => None,
        });
        assert_eq!(merged["nats"]["password"], "0042");
        assert_eq!(merged["nats"]["token"], "true");
    }

    const BASE: &str = "nats: { url: \"nats://127.0.0.1:4222\" }
sources:
  orders: { stream: ORDERS, subjects: ['orders.>'] }
sinks:
  out: { type: jetstream, subject: 'x.{aggregate_id}' }
routes:
  - { name: all, from: orders, to: [out] }
";

    #[test]
    fn a_duplicated_key_is_named_by_its_path_and_line() {
        let text = BASE.replace(
            "  out: { type: jetstream, subject: 'x.{aggregate_id}' }\n",
            "  out: { type: jetstream, subject: 'x.{aggregate_id}' }\n  out: { type: jetstream, subject: 'y' }\n",
        );
        let errors = load_str(&text).expect_err("a key given twice");
        assert_eq!(
            errors.to_string(),
            "sinks.out (line 6): \"out\" is given twice; each key may appear once"
        );
        assert_eq!(path_at_line("a:\n  b: { c: 1, c: 2 }\n", 2, "c"), "a.b.c");
    }

    #[test]
    fn every_problem_of_a_block_is_reported_with_its_full_path() {
        let text =
            format!("{BASE}consumers:\n  max_ack_pending: lots\n  ack_wait: 10ms\n  colour: red\n");
        let errors = load_str(&text).expect_err("three problems");
        let shown: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "consumers.colour (line 11): unknown field `colour`, expected one of `ack_wait`, `max_ack_pending`, `ordering`, `concurrency`, `retry`, `on_dead_letter`, `takeover_after`, `partitions`",
                "consumers.max_ack_pending (line 9): invalid type: string \"lots\", expected i64",
                "consumers.ack_wait (line 10): must be at least 1s",
            ]
        );
    }

    #[test]
    fn a_value_from_the_environment_names_its_variable() {
        let env = [(
            "JETLINE__CONSUMERS__CONCURRENCY".to_owned(),
            "many".to_owned(),
        )]
        .into_iter()
        .collect();
        let errors = load_with_env(BASE, &env).expect_err("not a number");
        assert_eq!(
            errors.to_string(),
            "consumers.concurrency (from JETLINE__CONSUMERS__CONCURRENCY): invalid type: string \"many\", expected usize"
        );
    }

    #[test]
    fn secrets_in_the_file_are_rejected() {
        let errors = load_str("nats: { url: x, password: hunter2 }\nsources: {}\nsinks: {}\n")
            .expect_err("a password in the file is an error");
        assert_eq!(errors.0[0].path, "nats.password");
        assert!(!errors.to_string().contains("hunter2"));
    }
}
