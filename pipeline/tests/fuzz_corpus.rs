//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) through the fuzz targets' own bodies, so a
//! regression fails `cargo test` on stable Rust, without libFuzzer. Needs no
//! servers.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::{
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

/// A fuzz target's body: one input, a panic on a finding.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("envelope_binary", targets::envelope_binary),
    ("envelope_json", targets::envelope_json),
    ("payload_validate", targets::payload_validate),
    ("upcast_chain", targets::upcast_chain),
    ("template", targets::template),
    ("config", targets::config),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("a readable corpus file");
            if panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
