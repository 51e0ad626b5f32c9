//! `jetline schema diff` as the built binary: against a directory and
//! against revisions of a temporary git repository; exit 0 when safe, 1 when
//! breaking (with the findings as JSON), 2 when no comparison can be made.
//! No NATS: the command reads files only.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::support::*;

/// A project as a user has it: `config/jetline.yaml` with the example's
/// chains, and a copy of the example schemas under `schemas/`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let project = Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        copy_dir(&schemas_dir(), &project.schemas());
        let example = std::fs::read_to_string(root().join("config/jetline.yaml"))
            .expect("the example configuration");
        // The example's schemas sit next to its config directory, as here.
        std::fs::create_dir_all(project.path().join("config")).expect("config/");
        std::fs::write(project.config(), example).expect("config written");
        project
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn schemas(&self) -> PathBuf {
        self.path().join("schemas")
    }

    fn config(&self) -> PathBuf {
        self.path().join("config/jetline.yaml")
    }

    /// Replaces `from` with `to` in a schema file (which must contain it).
    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.schemas().join(file);
        let text = std::fs::read_to_string(&path).expect("schema file");
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replace(from, to)).expect("schema written");
    }

    fn git(&self, args: &[&str]) {
        git(self.path(), args);
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }

    /// `jetline schema diff --against <against> --format json`: exit code,
    /// the report (when there is one) and stderr.
    fn diff(&self, against: &str) -> (i32, Option<Value>, String) {
        let output = Command::new(jetline_bin())
            .current_dir(self.path())
            .args(["schema", "diff", "--config"])
            .arg(self.config())
            .args(["--against", against, "--format", "json"])
            .output()
            .expect("jetline schema diff runs");
        (
            output.status.code().unwrap_or(-1),
            serde_json::from_slice(&output.stdout).ok(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("directory");
    for entry in std::fs::read_dir(from).expect("readable") {
        let path = entry.expect("entry").path();
        let destination = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_dir(&path, &destination);
        } else {
            std::fs::copy(&path, &destination).expect("copied");
        }
    }
}

/// Every `(rule, severity)` reported for `event_type`.
fn findings(report: &Value, event_type: &str) -> Vec<(String, String)> {
    report["event_types"][event_type]
        .as_array()
        .unwrap_or_else(|| panic!("{event_type} is listed: {report:#}"))
        .iter()
        .map(|finding| {
            (
                finding["rule"].as_str().unwrap_or_default().to_owned(),
                finding["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pair(rule: &str, severity: &str) -> (String, String) {
    (rule.to_owned(), severity.to_owned())
}

#[test]
fn schema_diff_against_an_unchanged_copy_is_safe_in_text_and_json() {
    let project = Project::new();
    let old = tempfile::tempdir().expect("temporary directory");
    copy_dir(&project.schemas(), old.path());
    let against = old.path().to_str().expect("a UTF-8 path");

    let (code, report, stderr) = project.diff(against);
    assert_eq!(code, 0, "{stderr}");
    let report = report.expect("one JSON object");
    assert_eq!(report["breaking"], false);
    for event_type in [
        "orders.OrderCreated",
        "orders.OrderShipped",
        "orders.OrderCancelled",
    ] {
        assert_eq!(findings(&report, event_type), [], "{report:#}");
    }

    let output = Command::new(jetline_bin())
        .args(["schema", "diff", "--config"])
        .arg(project.config())
        .args(["--against", against])
        .output()
        .expect("jetline schema diff runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    assert!(text.contains("orders.OrderCreated: unchanged"), "{text}");
    assert!(text.contains("0 errors, 0 warnings: safe"), "{text}");
}

#[test]
fn schema_diff_against_a_directory_reports_breaking_changes_with_their_rules() {
    let project = Project::new();
    let old = tempfile::tempdir().expect("temporary directory");
    copy_dir(&project.schemas(), old.path());
    // v1's carrier becomes a number, v1's LineItem.sku is renamed, and a
    // cancel reason goes away.
    project.edit(
        "orders/v1/orders.proto",
        "string carrier = 2",
        "int64 carrier = 2",
    );
    project.edit(
        "orders/v1/orders.proto",
        "string sku = 1",
        "string code = 1",
    );
    project.edit(
        "orders/v1/orders.proto",
        "  CANCEL_REASON_PAYMENT_FAILED = 3;\n",
        "",
    );

    let (code, report, stderr) = project.diff(old.path().to_str().expect("UTF-8"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("break stored events"), "{stderr}");
    let report = report.expect("one JSON object");
    assert_eq!(
        (report["breaking"].clone(), report["errors"].clone()),
        (true.into(), 3.into())
    );
    assert_eq!(
        findings(&report, "orders.OrderShipped"),
        [pair("FIELD_WIRE_COMPATIBLE_TYPE", "error")]
    );
    assert_eq!(
        findings(&report, "orders.OrderCreated"),
        [pair("FIELD_SAME_NAME", "error")]
    );
    assert_eq!(
        findings(&report, "orders.OrderCancelled"),
        [pair("ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED", "error")]
    );
    let renamed = &report["event_types"]["orders.OrderCreated"][0];
    assert_eq!(renamed["category"], "WIRE_JSON");
    assert_eq!(renamed["buf_rule"], "FIELD_SAME_NAME");
    assert_eq!(renamed["location"]["version"], 1);
    assert_eq!(renamed["location"]["field"], "items.code");
    assert_eq!(renamed["location"]["message"], "orders.v1.LineItem");
}

#[test]
fn schema_diff_against_git_revisions_checks_a_new_version_and_its_chain() {
    let project = Project::new();
    project.git(&["init", "-q"]);
    project.commit("the example");

    // A v4: v3 with currency (field 5) renamed to currency_code; no hop to it.
    let v3 = std::fs::read_to_string(project.schemas().join("orders/v3/orders.proto")).expect("v3");
    let v4 = v3
        .replace("package orders.v3", "package orders.v4")
        .replace("string currency = 5", "string currency_code = 5");
    std::fs::create_dir_all(project.schemas().join("orders/v4")).expect("v4/");
    std::fs::write(project.schemas().join("orders/v4/orders.proto"), v4).expect("v4 written");
    project.commit("v4 without a hop");
    let (code, report, stderr) = project.diff("HEAD~1");
    assert_eq!(code, 1, "{stderr}");
    let report = report.expect("one JSON object");
    assert_eq!(
        findings(&report, "orders.OrderCreated"),
        [
            pair("UPCAST_REACHES_NEWEST", "error"),
            pair("UPCAST_REACHES_NEWEST", "error"),
            pair("UPCAST_REACHES_NEWEST", "error"),
            pair("EVENT_VERSION_ADDED", "info"),
        ],
        "{report:#}"
    );

    // A hop that does not move the renamed field.
    let config = std::fs::read_to_string(project.config()).expect("config");
    let with_hop_to_v4 = |step: &str| {
        // The example's chain is the last block before dead_letter.
        let hop = format!("    - from: 3\n      to: 4\n      steps:\n        - {step}\n");
        let text = config.replacen("\ndead_letter:", &format!("{hop}\ndead_letter:"), 1);
        std::fs::write(project.config(), text).expect("config written");
    };
    with_hop_to_v4("set_default: { field: customer_id, value: \"unknown\" }");
    let (code, report, stderr) = project.diff("HEAD~1");
    assert_eq!(code, 1, "{stderr}");
    let report = report.expect("one JSON object");
    assert_eq!(
        findings(&report, "orders.OrderCreated"),
        [
            pair("EVENT_VERSION_ADDED", "info"),
            pair("UPCAST_STEP_FOR_RENAME", "error"),
        ],
        "{report:#}"
    );
    let rename = &report["event_types"]["orders.OrderCreated"][1];
    assert_eq!(
        rename["location"]["config"],
        "upcasters.orders.OrderCreated[2]"
    );
    assert_eq!(rename["location"]["field"], "currency_code");

    // With the rename step the change is safe, and `jetline check` agrees.
    with_hop_to_v4("rename: { from: currency, to: currency_code }");
    project.commit("the hop to v4");
    let (code, report, stderr) = project.diff("HEAD~2");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report.expect("one JSON object")["breaking"], false);
    let check = Command::new(jetline_bin())
        .args(["check", "--config"])
        .arg(project.config())
        .output()
        .expect("jetline check runs");
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Then a rename inside the existing v4 breaks its stored JSON events.
    project.edit(
        "orders/v4/orders.proto",
        "string order_id = 1",
        "string id = 1",
    );
    project.commit("rename within v4");
    let (code, report, stderr) = project.diff("HEAD~1");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        findings(&report.expect("one JSON object"), "orders.OrderCreated"),
        [pair("FIELD_SAME_NAME", "error")]
    );

    // Removing the version altogether leaves its stored events unreadable.
    std::fs::remove_dir_all(project.schemas().join("orders/v4")).expect("v4 removed");
    project.commit("v4 removed");
    let (code, report, stderr) = project.diff("HEAD~1");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        findings(&report.expect("one JSON object"), "orders.OrderCreated")
            .contains(&pair("EVENT_VERSION_NO_DELETE", "error"))
    );
}

#[test]
fn schema_diff_without_a_comparison_exits_2_saying_why() {
    let project = Project::new();
    // Not a repository: a value that is no directory cannot be a revision.
    let (code, report, stderr) = project.diff("main");
    assert_eq!(code, 2, "{stderr}");
    assert!(report.is_none());
    assert!(stderr.contains("not in a git repository"), "{stderr}");

    project.git(&["init", "-q"]);
    project.commit("the example");
    for bad in ["no-such-branch", "HEAD~5"] {
        let (code, _, stderr) = project.diff(bad);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains("is not a revision"), "{bad}: {stderr}");
    }

    // A revision from before the schemas existed.
    let empty = Project::new();
    std::fs::remove_dir_all(empty.schemas()).expect("schemas removed");
    std::fs::write(empty.path().join("README"), "first").expect("written");
    empty.git(&["init", "-q"]);
    empty.commit("no schemas yet");
    copy_dir(&schemas_dir(), &empty.schemas());
    empty.commit("the schemas");
    let (code, _, stderr) = empty.diff("HEAD~1");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("has no directory"), "{stderr}");

    // Old schemas that do not compile.
    let broken = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        broken.path().join("bad.proto"),
        "syntax = \"proto3\"; message {",
    )
    .expect("written");
    let (code, _, stderr) = project.diff(broken.path().to_str().expect("UTF-8"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the schemas of"), "{stderr}");
}
