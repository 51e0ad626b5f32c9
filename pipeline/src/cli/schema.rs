//! `jetline schema diff`: compiles the configuration's schemas and an older
//! copy of them (a directory, or a git revision of the repository holding
//! `schemas.dir`) with the registry's own loader, and reports what the change
//! breaks for stored events (`schema_diff.rs` decides; this file reads the
//! files and writes the report).
//!
//! A revision's files are read with `git` (`ls-tree`, `cat-file`) into a
//! temporary directory, removed when the command ends; the working tree and
//! the index are never touched.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::ConfigArg;
use crate::{
    Config,
    config::ConfigErrors,
    schema::{self, SchemaError, SchemaRegistry},
    schema_diff::{self, Chains, Finding, Location, Report, Severity},
};

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Compare the schemas with an older copy (a directory or a git
    /// revision) and report what breaks stored events: exit 0 when safe,
    /// 1 when breaking, 2 on a usage or configuration error.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The older schemas: an existing directory, or else a git revision of
    /// the repository that holds `schemas.dir` (`origin/main`, `HEAD~1`).
    #[arg(long)]
    pub against: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
}

/// Why no comparison could be made (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SchemaDiffError {
    #[error("invalid configuration:\n{0}")]
    Config(ConfigErrors),
    #[error("the current schemas: {0}")]
    Current(#[source] SchemaError),
    #[error("the schemas of {against}: {source}")]
    Old {
        against: String,
        #[source]
        source: SchemaError,
    },
    #[error("{against:?} is neither a directory nor a revision: {dir} is not in a git repository")]
    NotARepository { against: String, dir: PathBuf },
    #[error("{0:?} is not a revision of the repository holding schemas.dir")]
    UnknownRevision(String),
    #[error("{against} has no directory {path:?} (schemas.dir)")]
    NoSchemasAtRevision { against: String, path: String },
    #[error("cannot run git, which reads a revision's schemas: {0}")]
    CannotRunGit(#[source] std::io::Error),
    #[error("git {command} failed: {detail}")]
    Git { command: String, detail: String },
    #[error("cannot write the schemas of {against} to a temporary directory: {source}")]
    TempDir {
        against: String,
        #[source]
        source: std::io::Error,
    },
}

/// Compares the schemas of `config` with those of `against`.
pub fn diff(config: &Config, against: &str) -> Result<Report, SchemaDiffError> {
    let chains = Chains::from_config(&config.upcasters).map_err(SchemaDiffError::Config)?;
    let current = SchemaRegistry::load(&config.schemas).map_err(SchemaDiffError::Current)?;
    let old_source = OldSchemas::read(against, &config.schemas.dir)?;
    let old_error = |source| SchemaDiffError::Old {
        against: against.to_owned(),
        source,
    };
    let pool = schema::compile(old_source.dir()).map_err(old_error)?;
    // The explicit mapping is the current configuration's: a message it
    // names that the old schemas lack is a version they did not have.
    let explicit: BTreeMap<String, BTreeMap<String, String>> = config
        .schemas
        .types
        .iter()
        .map(|(event_type, versions)| {
            let known = versions
                .iter()
                .filter(|(_, message)| pool.get_message_by_name(message).is_some())
                .map(|(version, message)| (version.clone(), message.clone()))
                .collect();
            (event_type.clone(), known)
        })
        .collect();
    let old = SchemaRegistry::from_pool(pool, &explicit).map_err(old_error)?;
    Ok(schema_diff::diff(
        &old,
        &current,
        &chains,
        config.schemas.unknown_fields,
    ))
}

/// Where the older schemas are read from.
enum OldSchemas {
    Directory(PathBuf),
    /// A revision's files, written out; removed on drop.
    Revision(tempfile::TempDir),
}

impl OldSchemas {
    /// An existing directory is a directory; anything else is a revision.
    fn read(against: &str, schemas_dir: &Path) -> Result<Self, SchemaDiffError> {
        let path = Path::new(against);
        if path.is_dir() {
            return Ok(Self::Directory(path.to_path_buf()));
        }
        let git = Git { dir: schemas_dir };
        let not_a_repository = || SchemaDiffError::NotARepository {
            against: against.to_owned(),
            dir: schemas_dir.to_path_buf(),
        };
        if !schemas_dir.is_dir() {
            return Err(not_a_repository());
        }
        let prefix = git
            .run(&["rev-parse", "--show-prefix"])
            .map_err(|failure| failure.or(not_a_repository()))?;
        let prefix = String::from_utf8_lossy(&prefix).trim().to_owned();
        let unknown_revision = || SchemaDiffError::UnknownRevision(against.to_owned());
        // A leading '-' would be read as an option.
        if against.starts_with('-') {
            return Err(unknown_revision());
        }
        let commit = git
            .run(&[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{against}^{{commit}}"),
            ])
            .map_err(|failure| failure.or(unknown_revision()))?;
        let commit = String::from_utf8_lossy(&commit).trim().to_owned();
        let tree = format!("{commit}:{}", prefix.trim_end_matches('/'));
        // --full-tree: from a subdirectory, ls-tree would list only the
        // entries under that same subdirectory of the tree it is given.
        let listing = git
            .run(&["ls-tree", "-r", "-z", "--full-tree", &tree])
            .map_err(|failure| {
                failure.or(SchemaDiffError::NoSchemasAtRevision {
                    against: against.to_owned(),
                    path: prefix.clone(),
                })
            })?;
        let temp_error = |source| SchemaDiffError::TempDir {
            against: against.to_owned(),
            source,
        };
        let files = tempfile::Builder::new()
            .prefix("jetline-schema-diff-")
            .tempdir()
            .map_err(temp_error)?;
        for entry in listing.split(|byte| *byte == 0) {
            let Some(blob) = ProtoBlob::parse(entry) else {
                continue;
            };
            let contents = git
                .run(&["cat-file", "blob", blob.object])
                .map_err(|failure| failure.of("cat-file"))?;
            let destination = files.path().join(blob.path);
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent).map_err(temp_error)?;
            }
            std::fs::write(&destination, contents).map_err(temp_error)?;
        }
        Ok(Self::Revision(files))
    }

    fn dir(&self) -> &Path {
        match self {
            OldSchemas::Directory(dir) => dir,
            OldSchemas::Revision(files) => files.path(),
        }
    }
}

/// One `.proto` file of `git ls-tree -r -z`: `<mode> blob <object>\t<path>`.
struct ProtoBlob<'a> {
    object: &'a str,
    path: &'a Path,
}

impl<'a> ProtoBlob<'a> {
    /// `None` for anything but a regular `.proto` file at a plain relative
    /// path (symbolic links, submodules, other files).
    fn parse(entry: &'a [u8]) -> Option<Self> {
        let entry = std::str::from_utf8(entry).ok()?;
        let (header, path) = entry.split_once('\t')?;
        let mut header = header.split(' ');
        let (mode, kind, object) = (header.next()?, header.next()?, header.next()?);
        let path = Path::new(path);
        let plain = path
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        let is_proto = path.extension().is_some_and(|ext| ext == "proto");
        (kind == "blob" && mode != "120000" && plain && is_proto).then_some(Self { object, path })
    }
}

/// `git -C <dir>`: the repository holding the schemas.
struct Git<'a> {
    dir: &'a Path,
}

/// Why a git command gave no output.
enum GitFailure {
    /// git could not be started (not installed, not on the path).
    CannotRun(std::io::Error),
    /// git ran and refused, saying why on its standard error.
    Refused(String),
}

impl GitFailure {
    /// `refused` when git ran and said no; a git that cannot run says so.
    fn or(self, refused: SchemaDiffError) -> SchemaDiffError {
        match self {
            GitFailure::CannotRun(error) => SchemaDiffError::CannotRunGit(error),
            GitFailure::Refused(_) => refused,
        }
    }

    /// The failure as it is: of `command`, with what git said.
    fn of(self, command: &str) -> SchemaDiffError {
        match self {
            GitFailure::CannotRun(error) => SchemaDiffError::CannotRunGit(error),
            GitFailure::Refused(detail) => SchemaDiffError::Git {
                command: command.to_owned(),
                detail,
            },
        }
    }
}

impl Git<'_> {
    /// Runs git and returns its standard output.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>, GitFailure> {
        let output = Command::new("git")
            .arg("-C")
            .arg(self.dir)
            .args(args)
            .output()
            .map_err(GitFailure::CannotRun)?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(GitFailure::Refused(
            crate::text::cut(stderr.trim(), crate::text::LOGGED_CHARS).into_owned(),
        ))
    }
}

/// The report for a person: each event type, then its findings.
pub fn text(report: &Report, against: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "schemas compared with {against}");
    for (event_type, findings) in &report.event_types {
        if findings.is_empty() {
            let _ = writeln!(out, "{event_type}: unchanged");
            continue;
        }
        let _ = writeln!(out, "{event_type}:");
        for finding in findings {
            let _ = writeln!(
                out,
                "  {:<7} {} [{}] {}: {}",
                finding.severity.name(),
                finding.rule,
                finding.rule.category().name(),
                shown_location(&finding.location),
                finding.message
            );
        }
    }
    let verdict = if report.is_breaking() {
        "breaking"
    } else {
        "safe"
    };
    let _ = writeln!(out, "{}: {verdict}", counts(report));
    out
}

/// `1 error, 2 warnings`.
pub fn counts(report: &Report) -> String {
    let counted = |severity, noun: &str| match report.count(severity) {
        1 => format!("1 {noun}"),
        count => format!("{count} {noun}s"),
    };
    format!(
        "{}, {}",
        counted(Severity::Error, "error"),
        counted(Severity::Warning, "warning")
    )
}

/// `v2 items.sku (orders.v2.LineItem), upcasters.orders.OrderCreated[0]`.
fn shown_location(location: &Location) -> String {
    let mut parts = Vec::new();
    if let Some(version) = location.version {
        parts.push(format!("v{version}"));
    }
    match (&location.field, &location.message) {
        (Some(field), Some(message)) => parts.push(format!("{field} ({message})")),
        (None, Some(message)) => parts.push(message.clone()),
        (Some(field), None) => parts.push(field.clone()),
        (None, None) => {}
    }
    let mut shown = parts.join(" ");
    if let Some(config) = &location.config {
        if !shown.is_empty() {
            shown.push_str(", ");
        }
        shown.push_str(config);
    }
    if shown.is_empty() {
        "type".to_owned()
    } else {
        shown
    }
}

/// The report for a program: one object, the findings per event type.
pub fn json(report: &Report, against: &str) -> serde_json::Value {
    let event_types: serde_json::Map<String, serde_json::Value> = report
        .event_types
        .iter()
        .map(|(event_type, findings)| {
            let findings = findings
                .iter()
                .map(|finding| finding_json(event_type, finding))
                .collect();
            (event_type.clone(), serde_json::Value::Array(findings))
        })
        .collect();
    json!({
        "against": against,
        "breaking": report.is_breaking(),
        "errors": report.count(Severity::Error),
        "warnings": report.count(Severity::Warning),
        "event_types": event_types,
    })
}

fn finding_json(event_type: &str, finding: &Finding) -> serde_json::Value {
    let location = &finding.location;
    json!({
        "rule": finding.rule.id(),
        "buf_rule": finding.rule.buf_rule(),
        "category": finding.rule.category().name(),
        "severity": finding.severity.name(),
        "message": finding.message,
        "location": {
            "event_type": event_type,
            "version": location.version,
            "message": location.message,
            "field": location.field,
            "config": location.config,
        },
    })
}
