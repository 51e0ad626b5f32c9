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
    let origin = Origin {
        file: None,
        text: text.to_owned(),
    };
    let locate = |error: ConfigError| ConfigError {
        line: locate_line(&origin.text, &error.path),
        ..error
    };
    let file_only = layered(text, false).map_err(|err| one_error("", err.to_string()))?;
    check_no_secrets_in_file(&file_only).map_err(|errors| relocate(errors, locate))?;

    let mut merged = layered(text, true).map_err(|err| one_error("", err.to_string()))?;
    secrets_verbatim(&mut merged, |name| std::env::var(name).ok());
    let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        relocate(one_error(&path, err.into_inner().to_string()), locate)
    })?;
    validate(raw).map_err(|errors| relocate(errors, locate))
}

/// The file, with the environment on top when `with_env`, as a JSON value.
fn layered(text: &str, with_env: bool) -> Result<serde_json::Value, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml));
    if with_env {
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
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
    let content = |line: &str| {
        let trimmed = line.trim_start();
        !(trimmed.is_empty() || trimmed.starts_with('#'))
    };
    let indent = |line: &str| line.len() - line.trim_start().len();
    let (mut start, mut parent_column, mut found) = (0usize, None::<usize>, None);
    for segment in segments(path) {
        let inside = |column: usize| parent_column.is_none_or(|p| column > p);
        let mut hit = None;
        for (number, line) in lines.iter().enumerate().skip(start) {
            if !content(line) {
                continue;
            }
            // The key may follow a list dash on the line where an item starts.
            let column = if number == start && found == Some(number) {
                parent_column.map_or(0, |p| p + 2)
            } else {
                indent(line)
            };
            if number != start && !inside(indent(line)) {
                break;
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
                        hit = Some((number, key_column, number + 1));
                        break;
                    }
                }
                Segment::Index(wanted) => {
                    let items = lines[start..=number]
                        .iter()
                        .filter(|l| content(l) && l.trim_start().starts_with("- "))
                        .filter(|l| inside(indent(l)))
                        .count();
                    if rest.trim_start().starts_with("- ") && items == wanted + 1 {
                        hit = Some((number, indent(line), number));
                        break;
                    }
                }
            }
        }
        match hit {
            Some((number, column, next)) => {
                found = Some(number);
                parent_column = Some(column);
                start = next;
            }
            None => break,
        }
    }
    found.map(|number| number + 1)
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

    #[test]
    fn secrets_in_the_file_are_rejected() {
        let errors = load_str("nats: { url: x, password: hunter2 }\nsources: {}\nsinks: {}\n")
            .expect_err("a password in the file is an error");
        assert_eq!(errors.0[0].path, "nats.password");
        assert!(!errors.to_string().contains("hunter2"));
    }
}
