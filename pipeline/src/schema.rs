//! `.proto` directory -> [`SchemaRegistry`]: every file compiled at start-up
//! with protox (pure Rust), then `(event_type, schema_version)` -> message
//! descriptor.
//!
//! Convention: `orders.OrderCreated` at version 2 is the message
//! `orders.v2.OrderCreated`; `schemas.types` in the config overrides it.
//! Messages used as fields of other messages (and nested ones) are parts of
//! events, not event types.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// Jetline's own contract, never an event type.
const ENVELOPE_PACKAGE: &str = "jetline.v1";

use crate::config::raw::SchemasConfig;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no .proto file under {0}")]
    Empty(PathBuf),
    #[error("schema compilation failed: {0}")]
    Compile(#[from] protox::Error),
    #[error("schemas.types.{event_type}.{version}: {problem}")]
    Mapping {
        event_type: String,
        version: String,
        problem: String,
    },
}

/// Message descriptors per event type and version.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    pool: DescriptorPool,
    types: HashMap<String, BTreeMap<u32, MessageDescriptor>>,
}

impl SchemaRegistry {
    /// Compiles every `.proto` under `config.dir` and indexes the event types.
    pub fn load(config: &SchemasConfig) -> Result<Self, SchemaError> {
        Self::from_pool(compile(&config.dir)?, &config.types)
    }

    /// Indexes a pool by convention, then applies the explicit mapping.
    pub fn from_pool(
        pool: DescriptorPool,
        explicit: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Self, SchemaError> {
        let mut types: HashMap<String, BTreeMap<u32, MessageDescriptor>> = HashMap::new();
        // Messages used as a field of another message are parts of events
        // (a line item), not events; the explicit mapping can still name them.
        let parts: HashSet<String> = pool
            .all_messages()
            .flat_map(|message| message.fields().collect::<Vec<_>>())
            .filter_map(|field| field.kind().as_message().map(|m| m.full_name().to_owned()))
            .collect();
        for message in pool.all_messages() {
            let is_part = message.parent_message().is_some() || parts.contains(message.full_name());
            if is_part
                || message.package_name().starts_with("google.protobuf")
                || message.package_name() == ENVELOPE_PACKAGE
            {
                continue;
            }
            if let Some((event_type, version)) = by_convention(&message) {
                types
                    .entry(event_type)
                    .or_default()
                    .insert(version, message);
            }
        }
        for (event_type, versions) in explicit {
            for (version_text, message_name) in versions {
                let mapping_error = |problem: String| SchemaError::Mapping {
                    event_type: event_type.clone(),
                    version: version_text.clone(),
                    problem,
                };
                let version = version_text
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| mapping_error("the version must be a number >= 1".into()))?;
                let message = pool
                    .get_message_by_name(message_name)
                    .ok_or_else(|| mapping_error(format!("no message named {message_name:?}")))?;
                types
                    .entry(event_type.clone())
                    .or_default()
                    .insert(version, message);
            }
        }
        Ok(Self { pool, types })
    }

    /// The payload schema of `event_type` at `version`.
    pub fn resolve(&self, event_type: &str, version: u32) -> Option<&MessageDescriptor> {
        self.types.get(event_type)?.get(&version)
    }

    /// The newest version known for `event_type`.
    pub fn newest(&self, event_type: &str) -> Option<u32> {
        self.types.get(event_type)?.keys().next_back().copied()
    }

    pub fn contains(&self, event_type: &str) -> bool {
        self.types.contains_key(event_type)
    }

    /// Every event type with its versions, sorted.
    pub fn event_types(&self) -> BTreeMap<&str, Vec<u32>> {
        self.types
            .iter()
            .map(|(name, versions)| (name.as_str(), versions.keys().copied().collect()))
            .collect()
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }
}

/// Compiles every `.proto` under `dir` (and what they import) into one pool.
pub fn compile(dir: &Path) -> Result<DescriptorPool, SchemaError> {
    let files = proto_files(dir)?;
    if files.is_empty() {
        return Err(SchemaError::Empty(dir.to_path_buf()));
    }
    let mut compiler = protox::Compiler::new([dir])?;
    compiler.include_imports(true);
    compiler.open_files(&files)?;
    Ok(compiler.descriptor_pool())
}

/// `orders.v2.OrderCreated` -> (`orders.OrderCreated`, 2).
fn by_convention(message: &MessageDescriptor) -> Option<(String, u32)> {
    let package = message.package_name();
    let (domain, version) = match package.rsplit_once('.') {
        Some((domain, last)) => (domain, last),
        None => ("", package),
    };
    let version: u32 = version
        .strip_prefix('v')?
        .parse()
        .ok()
        .filter(|v| *v >= 1)?;
    let event_type = if domain.is_empty() {
        message.name().to_owned()
    } else {
        format!("{domain}.{}", message.name())
    };
    Some((event_type, version))
}

/// Every `.proto` under `dir`, relative to it, sorted for stable errors.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| SchemaError::Io {
            dir: current.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| SchemaError::Io {
                    dir: current.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto")
                && let Ok(relative) = path.strip_prefix(dir)
            {
                files.push(relative.to_path_buf());
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> SchemaRegistry {
        let config = SchemasConfig {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas")),
            ..SchemasConfig::default()
        };
        SchemaRegistry::load(&config).expect("example schemas compile")
    }

    #[test]
    fn indexes_the_example_domain_by_convention() {
        let registry = example();
        assert_eq!(registry.newest("orders.OrderCreated"), Some(3));
        assert_eq!(registry.newest("orders.OrderShipped"), Some(1));
        assert_eq!(
            registry
                .resolve("orders.OrderCreated", 2)
                .map(|m| m.full_name()),
            Some("orders.v2.OrderCreated")
        );
        assert!(registry.resolve("orders.OrderCreated", 4).is_none());
    }

    #[test]
    fn explicit_mapping_overrides_and_is_checked() {
        let pool = example().pool().clone();
        let mut explicit = BTreeMap::new();
        explicit.insert(
            "legacy.Created".to_owned(),
            BTreeMap::from([("1".to_owned(), "orders.v1.OrderCreated".to_owned())]),
        );
        let registry = SchemaRegistry::from_pool(pool.clone(), &explicit).expect("valid");
        assert_eq!(registry.newest("legacy.Created"), Some(1));

        explicit.insert(
            "x.Y".to_owned(),
            BTreeMap::from([("1".to_owned(), "no.Such".to_owned())]),
        );
        assert!(matches!(
            SchemaRegistry::from_pool(pool, &explicit),
            Err(SchemaError::Mapping { .. })
        ));
    }
}
