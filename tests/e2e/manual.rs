//! The README held to the program: every fenced block marked runnable runs
//! and gives the exit code and the output shown; every long flag of the CLI
//! is shown with its command, and every flag shown with a command exists;
//! every key the configuration accepts is documented, and every key of the
//! README's configuration examples is accepted by the loader.
//!
//! A marker is an HTML comment on the line right before a block's fence
//! (GitHub does not show it):
//!
//! - `<!-- runnable -->`: bash runs the block (`set -euo pipefail`) with the
//!   built `jetline` first on `PATH`, in a temporary copy of `config/` and
//!   `schemas/`, never in the working tree. The copy is a git repository
//!   whose `origin/main` is its one commit, beside a copy of the schemas at
//!   `../old-schemas`, so that `schema diff` examples have an older copy to
//!   compare with. Options, comma separated: `exit N` (the exit code the
//!   block must give; 0 unless said), `nats` (a private nats-server holding
//!   the streams of `config/streams/`, its URL in `JETLINE__NATS__URL`).
//! - `<!-- output -->`: the block holds lines that the runnable block above
//!   it prints on standard output, in that order (`...` stands for lines
//!   left out).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::CommandFactory as _;
use jetline::{RunError, config::raw, schema::SchemaError};

use crate::support::*;

fn readme() -> Markdown {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    Markdown::parse(&text)
}

// ---------------------------------------------------------------------------
// Markdown: fenced blocks with their markers, and the code spans of the prose.

/// A fenced block: the line of its opening fence (1-based), its language,
/// its text, and the marker on the line before the fence.
struct Block {
    line: usize,
    lang: String,
    text: String,
    marker: Option<String>,
}

struct Markdown {
    blocks: Vec<Block>,
    /// Inline code spans outside the fenced blocks, each with its line.
    spans: Vec<(usize, String)>,
    /// Markers that stand anywhere but right before a fence: they would
    /// mark nothing.
    stray_markers: Vec<usize>,
}

impl Markdown {
    fn parse(text: &str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut markdown = Markdown {
            blocks: Vec::new(),
            spans: Vec::new(),
            stray_markers: Vec::new(),
        };
        let mut prose = String::new();
        let mut prose_line = 1;
        let mut index = 0;
        while index < lines.len() {
            let Some(lang) = lines[index].strip_prefix("```") else {
                if marker(lines[index]).is_some()
                    && !lines
                        .get(index + 1)
                        .is_some_and(|next| next.starts_with("```"))
                {
                    markdown.stray_markers.push(index + 1);
                }
                prose.push_str(lines[index]);
                prose.push('\n');
                index += 1;
                continue;
            };
            code_spans(&prose, prose_line, &mut markdown.spans);
            prose.clear();
            let close = (index + 1..lines.len())
                .find(|&line| lines[line].starts_with("```"))
                .unwrap_or(lines.len());
            markdown.blocks.push(Block {
                line: index + 1,
                lang: lang.trim().to_owned(),
                text: lines[index + 1..close]
                    .iter()
                    .map(|line| format!("{line}\n"))
                    .collect(),
                marker: index
                    .checked_sub(1)
                    .and_then(|before| marker(lines[before])),
            });
            index = close + 1;
            prose_line = index + 1;
        }
        code_spans(&prose, prose_line, &mut markdown.spans);
        markdown
    }
}

/// The text of an HTML comment standing alone on a line.
fn marker(line: &str) -> Option<String> {
    let inner = line.trim().strip_prefix("<!--")?.strip_suffix("-->")?;
    Some(inner.trim().to_owned())
}

/// The code spans of `prose` (which starts at `first_line`); a span may
/// run over a line break, as in Markdown.
fn code_spans(prose: &str, first_line: usize, spans: &mut Vec<(usize, String)>) {
    let mut offset = 0;
    while let Some(open) = prose[offset..].find('`').map(|at| offset + at) {
        let ticks = prose[open..].chars().take_while(|&c| c == '`').count();
        let delimiter = &prose[open..open + ticks];
        let start = open + ticks;
        let Some(close) = prose[start..].find(delimiter).map(|at| start + at) else {
            break;
        };
        let line = first_line + prose[..open].matches('\n').count();
        spans.push((line, prose[start..close].replace('\n', " ")));
        offset = close + ticks;
    }
}

// ---------------------------------------------------------------------------
// Runnable blocks.

/// How long one block may run: a debug build compiles the schemas on every
/// command.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Runnable {
    line: usize,
    script: String,
    exit: i32,
    nats: bool,
    /// The lines shown as its output.
    output: Option<String>,
}

/// Why a marked block does not do what the README says.
#[derive(Debug, PartialEq)]
enum Problem {
    /// A marker the runner does not know, or one that marks nothing.
    Marker(String),
    /// The block exited otherwise (`None`: killed after [`BLOCK_TIMEOUT`]).
    Exit { expected: i32, got: Option<i32> },
    /// A line shown as output that the block did not print (in its place).
    Output { missing: String },
}

#[derive(Debug)]
struct Failure {
    source: String,
    line: usize,
    problem: Problem,
    /// The script with what it printed, to read in the report.
    detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.problem {
            Problem::Marker(message) => message.clone(),
            Problem::Exit { expected, got } => match got {
                Some(code) => format!("the block exited {code}, the README says {expected}"),
                None => format!("the block ran past {BLOCK_TIMEOUT:?}"),
            },
            Problem::Output { missing } => {
                format!("the block did not print the line shown: {missing:?}")
            }
        };
        write!(f, "{}:{}: {what}\n{}", self.source, self.line, self.detail)
    }
}

/// The runnable blocks of `markdown`, each with the output shown for it.
fn runnables(markdown: &Markdown, source: &str) -> (Vec<Runnable>, Vec<Failure>) {
    let mut runnables: Vec<Runnable> = Vec::new();
    let mut failures: Vec<Failure> = markdown
        .stray_markers
        .iter()
        .map(|&line| marker_failure(source, line, "a marker must stand right before a fence"))
        .collect();
    for block in &markdown.blocks {
        let Some(marker) = &block.marker else {
            continue;
        };
        if marker == "output" {
            match runnables.last_mut() {
                Some(runnable) if runnable.output.is_none() => {
                    runnable.output = Some(block.text.clone());
                }
                _ => failures.push(marker_failure(
                    source,
                    block.line,
                    "an output block follows no runnable block of its own",
                )),
            }
            continue;
        }
        let Some(options) = marker
            .strip_prefix("runnable")
            .map(|rest| rest.trim_start_matches(':').trim())
        else {
            failures.push(marker_failure(
                source,
                block.line,
                &format!("unknown marker {marker:?}"),
            ));
            continue;
        };
        let mut runnable = Runnable {
            line: block.line,
            script: block.text.clone(),
            exit: 0,
            nats: false,
            output: None,
        };
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match option.strip_prefix("exit ").map(|code| code.trim().parse()) {
                Some(Ok(code)) => runnable.exit = code,
                None if option == "nats" => runnable.nats = true,
                _ => failures.push(marker_failure(
                    source,
                    block.line,
                    &format!("unknown option {option:?} (known: exit N, nats)"),
                )),
            }
        }
        runnables.push(runnable);
    }
    (runnables, failures)
}

fn marker_failure(source: &str, line: usize, message: &str) -> Failure {
    Failure {
        source: source.to_owned(),
        line,
        problem: Problem::Marker(message.to_owned()),
        detail: String::new(),
    }
}

/// Runs every runnable block of `markdown`; what went otherwise than shown.
fn run_marked_blocks(markdown: &Markdown, source: &str) -> (usize, Vec<Failure>) {
    let (runnables, mut failures) = runnables(markdown, source);
    for runnable in &runnables {
        if let Err((problem, detail)) = run_block(runnable) {
            failures.push(Failure {
                source: source.to_owned(),
                line: runnable.line,
                problem,
                detail,
            });
        }
    }
    (runnables.len(), failures)
}

fn run_block(runnable: &Runnable) -> Result<(), (Problem, String)> {
    let sandbox = Sandbox::new();
    // The server lives as long as the block runs.
    let server = runnable.nats.then(server_with_example_streams);
    let bin_dir = jetline_bin()
        .parent()
        .expect("the binary sits in a directory")
        .to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(
            std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .expect("PATH joins");
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("set -euo pipefail\n{}", runnable.script))
        .current_dir(sandbox.project())
        .env("PATH", path);
    // The block sees only the variables the README gives it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("JETLINE") {
            command.env_remove(name);
        }
    }
    if let Some(server) = &server {
        command.env("JETLINE__NATS__URL", server.url());
    }
    let (code, stdout, stderr) = output_within(command, BLOCK_TIMEOUT);
    let detail = format!(
        "--- block\n{}--- stdout\n{stdout}--- stderr\n{stderr}",
        runnable.script
    );
    if code != Some(runnable.exit) {
        return Err((
            Problem::Exit {
                expected: runnable.exit,
                got: code,
            },
            detail,
        ));
    }
    if let Some(shown) = &runnable.output
        && let Some(missing) = first_line_not_printed(shown, &stdout)
    {
        return Err((Problem::Output { missing }, detail));
    }
    Ok(())
}

/// The first line of `shown` (blank lines and `...` aside) that `printed`
/// does not hold after the lines matched before it.
fn first_line_not_printed(shown: &str, printed: &str) -> Option<String> {
    let mut printed = printed.lines().map(str::trim_end);
    shown
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && *line != "...")
        .find(|expected| !printed.any(|line| line == *expected))
        .map(str::to_owned)
}

/// Runs `command` (its own process group, so a timeout ends what it
/// started too): exit code (`None` when killed), stdout and stderr.
fn output_within(mut command: Command, limit: Duration) -> (Option<i32>, String, String) {
    use std::os::unix::process::CommandExt as _;
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash starts");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("the block's status") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// What the README's commands read, copied: `config/` and `schemas/` in
/// `project/` (a git repository whose `origin/main` is its one commit), and
/// the schemas again as `old-schemas/` beside it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sandbox = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        let project = sandbox.project();
        for folder in ["config", "schemas"] {
            copy_dir(&root().join(folder), &project.join(folder));
        }
        copy_dir(&schemas_dir(), &sandbox.dir.path().join("old-schemas"));
        git(&project, &["init", "-q"]);
        git(&project, &["add", "-A"]);
        git(&project, &["commit", "-q", "-m", "the README's project"]);
        git(
            &project,
            &["update-ref", "refs/remotes/origin/main", "HEAD"],
        );
        sandbox
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("directory created");
    for entry in std::fs::read_dir(from).expect("directory readable") {
        let path = entry.expect("directory entry").path();
        let destination = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_dir(&path, &destination);
        } else {
            std::fs::copy(&path, &destination).expect("file copied");
        }
    }
}

/// A private nats-server with the example's streams (`config/streams/`).
fn server_with_example_streams() -> NatsServer {
    let server = NatsServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let js = server.jetstream().await;
        for entry in std::fs::read_dir(root().join("config/streams")).expect("config/streams") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("stream file");
            let stream: serde_json::Value = serde_json::from_str(&text).expect("stream JSON");
            let name = stream["name"].as_str().expect("a stream name");
            let subjects: Vec<&str> = stream["subjects"]
                .as_array()
                .expect("subjects")
                .iter()
                .filter_map(|subject| subject.as_str())
                .collect();
            create_stream(&js, name, &subjects).await;
        }
    });
    server
}

fn report(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn readme_runnable_blocks_run_as_shown() {
    let (ran, failures) = run_marked_blocks(&readme(), "README.md");
    assert!(failures.is_empty(), "{}", report(&failures));
    assert!(ran > 0, "the README marks no block runnable");
}

/// The runner itself: a block needing NATS runs against the example
/// streams, and a block that exits or prints otherwise than shown is
/// reported at the line of its fence.
#[test]
fn a_block_that_differs_from_the_readme_is_reported_at_its_line() {
    let sample = r#"A publish to the example's stream:

<!-- runnable: nats -->
```
echo '{"eventId":"e-1","eventType":"orders.OrderCreated","schemaVersion":1,"aggregateId":"o-1","occurredAt":"2026-11-23T10:00:00Z","payload":{"orderId":"o-1","customerId":"c-1","total":12.5}}' \
  | jetline publish --config config/jetline.yaml --subject 'orders.{aggregate_id}'
```

<!-- output -->
```
orders.o-1 seq 1
```

<!-- runnable -->
```
jetline check --config config/jetline.yaml
```

<!-- output -->
```
a line that check does not print
```

<!-- runnable: exit 3 -->
```
jetline schema diff --config config/jetline.yaml --against ../old-schemas
```
"#;
    let (ran, failures) = run_marked_blocks(&Markdown::parse(sample), "sample.md");
    assert_eq!(ran, 3);
    let found: Vec<(usize, &Problem)> = failures
        .iter()
        .map(|failure| (failure.line, &failure.problem))
        .collect();
    let output = Problem::Output {
        missing: "a line that check does not print".to_owned(),
    };
    let exit = Problem::Exit {
        expected: 3,
        got: Some(0),
    };
    assert_eq!(found, [(15, &output), (25, &exit)], "{}", report(&failures));
    assert!(failures.iter().all(|failure| failure.source == "sample.md"));
}

// ---------------------------------------------------------------------------
// CLI flags.
//
// A command is shown where the README writes `jetline` (or a path ending in
// `/jetline`) followed by its subcommand names, in a code span or a line of
// a fenced block (lines joined at a trailing `\`). Every `--flag` after the
// names, up to a shell redirection, `;`, `&&` or a `#` comment, is shown for
// the command named so far; `a|b` offers alternatives (`list\|show`,
// `--from-start\|--from-seq`), and brackets and parentheses are usage
// notation. clap's own `--help` and `--version` are left aside.

/// The CLI as clap describes it, per command path (`[]` the root,
/// `["dlq", "list"]`).
struct Cli {
    /// Subcommand names and every long flag accepted, the global flags
    /// inherited from above included.
    accepted: BTreeMap<Vec<String>, (BTreeSet<String>, BTreeSet<String>)>,
    /// The long flags declared on each command (before clap copies global
    /// flags into subcommands), with whether each is global.
    declared: BTreeMap<Vec<String>, Vec<(String, bool)>>,
}

/// Calls `visit` with `command`, every subcommand below it and its path.
fn each_command(
    command: &clap::Command,
    path: &mut Vec<String>,
    visit: &mut dyn FnMut(&[String], &clap::Command),
) {
    visit(path, command);
    for sub in command.get_subcommands() {
        path.push(sub.get_name().to_owned());
        each_command(sub, path, visit);
        path.pop();
    }
}

/// The long flags of `command`, but clap's own `--help` and `--version`.
fn long_flags(command: &clap::Command) -> impl Iterator<Item = (String, &clap::Arg)> {
    command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| Some((format!("--{}", arg.get_long()?), arg)))
}

impl Cli {
    fn introspect() -> Self {
        let mut cli = Cli {
            accepted: BTreeMap::new(),
            declared: BTreeMap::new(),
        };
        let mut built = jetline::cli::Cli::command();
        built.build();
        each_command(&built, &mut Vec::new(), &mut |path, command| {
            let subcommands = command
                .get_subcommands()
                .map(|sub| sub.get_name().to_owned())
                .collect();
            let flags = long_flags(command).map(|(flag, _)| flag).collect();
            cli.accepted.insert(path.to_vec(), (subcommands, flags));
        });
        let declared = jetline::cli::Cli::command();
        each_command(&declared, &mut Vec::new(), &mut |path, command| {
            let flags = long_flags(command)
                .map(|(flag, arg)| (flag, arg.is_global_set()))
                .collect();
            cli.declared.insert(path.to_vec(), flags);
        });
        cli
    }

    fn is_subcommand(&self, path: &[String], name: &str) -> bool {
        self.accepted
            .get(path)
            .is_some_and(|(subcommands, _)| subcommands.contains(name))
    }
}

/// `jetline dlq list`, for messages.
fn command_name(path: &[String]) -> String {
    std::iter::once("jetline")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A flag the README shows with a command.
#[derive(Debug)]
struct Shown {
    line: usize,
    path: Vec<String>,
    flag: String,
}

/// What the README shows of the CLI: each flag with its command, and every
/// command path it names.
fn shown_commands(markdown: &Markdown, cli: &Cli) -> (Vec<Shown>, BTreeSet<Vec<String>>) {
    let mut units: Vec<(usize, String)> = markdown.spans.clone();
    for block in &markdown.blocks {
        let mut joined: Option<(usize, String)> = None;
        for (offset, line) in block.text.lines().enumerate() {
            let (start, mut text) = joined
                .take()
                .unwrap_or((block.line + 1 + offset, String::new()));
            text.push_str(line);
            match text.strip_suffix('\\') {
                Some(continued) => joined = Some((start, format!("{continued} "))),
                None => units.push((start, text)),
            }
        }
        units.extend(joined);
    }
    let mut shown = Vec::new();
    let mut named = BTreeSet::new();
    for (line, text) in &units {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        for (index, token) in tokens.iter().enumerate() {
            let bare = token.trim_matches(['`', '"', '\'', '(', ')']);
            if bare == "jetline" || bare.ends_with("/jetline") {
                read_command(&tokens[index + 1..], *line, cli, &mut shown, &mut named);
            }
        }
    }
    (shown, named)
}

/// Reads the words after `jetline`: subcommand names, then flags.
fn read_command(
    tokens: &[&str],
    line: usize,
    cli: &Cli,
    shown: &mut Vec<Shown>,
    named: &mut BTreeSet<Vec<String>>,
) {
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    for token in tokens {
        let ends_command = ["<", ">", "2>", "#", ";", "&&", "||", "$("]
            .iter()
            .any(|stop| token.starts_with(stop));
        if ends_command {
            break;
        }
        let alternatives: Vec<&str> = token
            .split('|')
            .map(|word| {
                word.trim_start_matches(['[', '(', '{', '"', '\'', '`'])
                    .trim_end_matches([']', ')', '}', '"', '\'', '`', ',', '.', ';', ':', '\\'])
            })
            .filter(|word| !word.is_empty())
            .collect();
        let deeper: Vec<Vec<String>> = paths
            .iter()
            .flat_map(|path| {
                alternatives
                    .iter()
                    .filter(|word| cli.is_subcommand(path, word))
                    .map(|word| {
                        let mut deeper = path.clone();
                        deeper.push((*word).to_owned());
                        deeper
                    })
            })
            .collect();
        if !deeper.is_empty() {
            paths = deeper;
            continue;
        }
        for word in alternatives
            .iter()
            .filter(|word| word.starts_with("--") && word.len() > 2)
        {
            let flag = word.split('=').next().unwrap_or(word);
            for path in &paths {
                shown.push(Shown {
                    line,
                    path: path.clone(),
                    flag: flag.to_owned(),
                });
            }
        }
    }
    named.extend(paths);
}

/// Every subcommand and every long flag is shown with its command; a
/// global flag may be shown with any command below the one declaring it.
#[test]
fn readme_shows_every_cli_command_and_flag_with_its_command() {
    let cli = Cli::introspect();
    let (shown, named) = shown_commands(&readme(), &cli);
    let mut missing = Vec::new();
    for (path, flags) in &cli.declared {
        if !named.iter().any(|shown| shown.starts_with(path)) {
            missing.push(format!("the command `{}`", command_name(path)));
        }
        for (flag, global) in flags {
            let documented = shown.iter().any(|shown| {
                shown.flag == *flag
                    && (shown.path == *path || (*global && shown.path.starts_with(path)))
            });
            if !documented {
                missing.push(format!("`{} {flag}`", command_name(path)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README does not show (a flag counts where it follows its command, \
         e.g. in the CLI table's row):\n{}",
        missing.join("\n")
    );
}

/// Every flag the README writes after a command is one that command takes.
#[test]
fn every_flag_the_readme_shows_exists() {
    let cli = Cli::introspect();
    let (shown, _) = shown_commands(&readme(), &cli);
    let unknown: Vec<String> = shown
        .iter()
        .filter(|shown| {
            !cli.accepted
                .get(&shown.path)
                .is_some_and(|(_, flags)| flags.contains(&shown.flag))
        })
        .map(|shown| {
            format!(
                "README.md:{}: `{}` takes no {}",
                shown.line,
                command_name(&shown.path),
                shown.flag
            )
        })
        .collect();
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    assert!(shown.len() > 20, "the README shows flags: {shown:?}");
}

// ---------------------------------------------------------------------------
// Configuration keys.
//
// The key paths come from the configuration's own types: `probe::shape`
// asks each type's `Deserialize` what it reads where (a struct's keys, a
// map, a list, a value). Where a type holds a `serde_json::Value` the
// loader reads on later, the shape is written here from the types that
// read it (`OPAQUE` lists every such place and why), and the test checks
// that the probe finds exactly those places.

mod probe {
    //! A `Deserializer` that answers nothing and records what the type asks
    //! for at the end of a route of keys and items: each struct's keys are
    //! the names its derived `Deserialize` declares, renames applied, so no
    //! list of keys is kept by hand.

    use std::{cell::Cell, collections::BTreeMap};

    use serde::de::{
        self, DeserializeOwned, DeserializeSeed, IntoDeserializer as _, Visitor, value::Error,
    };

    /// What a type reads, as a key path sees it.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Shape {
        /// A struct (or an enum written as a one-key mapping): its keys.
        Keys(BTreeMap<String, Shape>),
        /// A mapping whose keys the user names (sources, event types).
        Map(Box<Shape>),
        List(Box<Shape>),
        /// A sink block: the keys of every kind, and each kind's own.
        Sink {
            common: BTreeMap<String, Shape>,
            kinds: BTreeMap<String, BTreeMap<String, Shape>>,
        },
        /// A value with no keys: a scalar, a duration, a keyword.
        Leaf,
        /// Any value (`serde_json::Value`), read on by other code.
        Opaque,
    }

    /// The segment standing for a key the user names.
    pub const ENTRY: &str = "<name>";

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Key(&'static str),
        Item,
    }

    #[derive(Debug, Clone, Copy)]
    enum Asked {
        Struct(&'static [&'static str]),
        Map,
        Seq,
        Enum(&'static [&'static str]),
        Unit,
        Scalar,
        Any,
    }

    pub fn shape<T: DeserializeOwned>() -> Shape {
        explore::<T>(&mut Vec::new())
    }

    fn explore<T: DeserializeOwned>(route: &mut Vec<Step>) -> Shape {
        let below = |step: Step, route: &mut Vec<Step>| {
            route.push(step);
            let shape = explore::<T>(route);
            route.pop();
            shape
        };
        match ask::<T>(route) {
            Asked::Struct(fields) => Shape::Keys(
                fields
                    .iter()
                    .map(|field| (field.to_string(), below(Step::Key(field), route)))
                    .collect(),
            ),
            Asked::Map => Shape::Map(Box::new(below(Step::Key(ENTRY), route))),
            Asked::Seq => Shape::List(Box::new(below(Step::Item, route))),
            // A variant with content is written as a one-key mapping
            // (`- rename: {...}`); unit variants are words, values.
            Asked::Enum(variants) => {
                let keyed: BTreeMap<String, Shape> = variants
                    .iter()
                    .filter_map(|variant| {
                        route.push(Step::Key(variant));
                        let unit = matches!(ask::<T>(route), Asked::Unit);
                        let shape = (!unit).then(|| explore::<T>(route));
                        route.pop();
                        Some((variant.to_string(), shape?))
                    })
                    .collect();
                if keyed.is_empty() {
                    Shape::Leaf
                } else {
                    Shape::Keys(keyed)
                }
            }
            Asked::Unit | Asked::Scalar => Shape::Leaf,
            Asked::Any => Shape::Opaque,
        }
    }

    fn ask<T: DeserializeOwned>(route: &[Step]) -> Asked {
        let asked = Cell::new(None);
        let _ = T::deserialize(Probe {
            route,
            asked: &asked,
        });
        asked.get().unwrap_or_else(|| {
            panic!(
                "{} asked for nothing at {route:?}",
                std::any::type_name::<T>()
            )
        })
    }

    struct Probe<'a> {
        route: &'a [Step],
        asked: &'a Cell<Option<Asked>>,
    }

    impl<'a> Probe<'a> {
        fn stop<T>(self, asked: Asked) -> Result<T, Error> {
            if self.asked.get().is_none() {
                self.asked.set(Some(asked));
            }
            Err(de::Error::custom("probed"))
        }

        fn then(&self, rest: &'a [Step]) -> Probe<'a> {
            Probe {
                route: rest,
                asked: self.asked,
            }
        }

        /// Hands the visitor a mapping of one key, whose value is probed on.
        fn one_key<'de, V: Visitor<'de>>(
            self,
            asked: Asked,
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.route.split_first() {
                None => self.stop(asked),
                Some((Step::Key(key), rest)) => visitor.visit_map(OneKey {
                    key: Some(key),
                    value: Some(self.then(rest)),
                }),
                Some((Step::Item, _)) => Err(de::Error::custom("a mapping has no items")),
            }
        }
    }

    macro_rules! scalars {
        ($($method:ident)*) => {
            $(fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
                self.stop(Asked::Scalar)
            })*
        };
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            self.stop(Asked::Any)
        }

        scalars! {
            deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
            deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
            deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
            deserialize_byte_buf deserialize_unit deserialize_identifier deserialize_ignored_any
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _visitor: V,
        ) -> Result<V::Value, Error> {
            self.stop(Asked::Scalar)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.route.split_first() {
                None => self.stop(Asked::Seq),
                Some((Step::Item, rest)) => visitor.visit_seq(OneItem {
                    item: Some(self.then(rest)),
                }),
                Some((Step::Key(_), _)) => Err(de::Error::custom("a list has no keys")),
            }
        }

        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            _len: usize,
            _visitor: V,
        ) -> Result<V::Value, Error> {
            self.stop(Asked::Scalar)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            _visitor: V,
        ) -> Result<V::Value, Error> {
            self.stop(Asked::Scalar)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.one_key(Asked::Map, visitor)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.one_key(Asked::Struct(fields), visitor)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.route.split_first() {
                None => self.stop(Asked::Enum(variants)),
                Some((Step::Key(variant), rest)) => visitor.visit_enum(OneVariant {
                    name: variant,
                    content: self.then(rest),
                }),
                Some((Step::Item, _)) => Err(de::Error::custom("an enum has no items")),
            }
        }
    }

    struct OneKey<'a> {
        key: Option<&'static str>,
        value: Option<Probe<'a>>,
    }

    impl<'de> de::MapAccess<'de> for OneKey<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            self.key
                .take()
                .map(|key| seed.deserialize(key.into_deserializer()))
                .transpose()
        }

        fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
            match self.value.take() {
                Some(probe) => seed.deserialize(probe),
                None => Err(de::Error::custom("one value only")),
            }
        }
    }

    struct OneItem<'a> {
        item: Option<Probe<'a>>,
    }

    impl<'de> de::SeqAccess<'de> for OneItem<'_> {
        type Error = Error;

        fn next_element_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, Error> {
            self.item
                .take()
                .map(|probe| seed.deserialize(probe))
                .transpose()
        }
    }

    struct OneVariant<'a> {
        name: &'static str,
        content: Probe<'a>,
    }

    impl<'de, 'a> de::EnumAccess<'de> for OneVariant<'a> {
        type Error = Error;
        type Variant = Probe<'a>;

        fn variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Probe<'a>), Error> {
            let name = seed.deserialize(self.name.into_deserializer())?;
            Ok((name, self.content))
        }
    }

    impl<'de> de::VariantAccess<'de> for Probe<'_> {
        type Error = Error;

        fn unit_variant(self) -> Result<(), Error> {
            self.stop(Asked::Unit)
        }

        fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
            seed.deserialize(self)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            _len: usize,
            _visitor: V,
        ) -> Result<V::Value, Error> {
            self.stop(Asked::Scalar)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.one_key(Asked::Struct(fields), visitor)
        }
    }
}

use probe::{ENTRY, Shape, shape};

/// Where a type holds a `serde_json::Value` (path inside the type, as
/// [`display`] writes it), and what reads it there. Each is modelled in
/// [`config_shape`] from the types named.
const OPAQUE: &[(&str, &str, &str)] = &[
    (
        "RawConfig",
        "sinks.<name>",
        "split by validate.rs's parse_sink: `type`, `schema_version`, SINK_COMMON_KEYS \
         (ConsumerOverrides), the rest by the kind's config struct",
    ),
    (
        "RawConfig",
        "consumers.<name>",
        "validate.rs takes out `durable_prefix` and reads the rest as ConsumerOverrides",
    ),
    (
        "RawConfig",
        "upcasters.<name>",
        "upcast/check.rs reads each chain as a list of HopConfig",
    ),
    (
        "KvSinkConfig",
        "on.<name>.set.<name>",
        "a ValueSpec (custom Deserialize): a value path, a literal, or { literal: ... }",
    ),
    (
        "KvSinkConfig",
        "on.<name>.increment.<name>",
        "a ValueSpec, as for set",
    ),
    (
        "KvSinkConfig",
        "on.<name>.append.<name>",
        "an AppendSpec (custom Deserialize): a ValueSpec, or { value: ValueSpec, max_len: N }",
    ),
    (
        "HopConfig",
        "steps[].set.value",
        "any value, in the proto3 JSON mapping: no keys of the configuration",
    ),
    (
        "HopConfig",
        "steps[].set_default.value",
        "any value, as for set",
    ),
    ("HopConfig", "steps[].convert.multiply", "a number"),
];

/// A key path: keys, `<name>` for a key the user names, `[]` for a list's
/// items, and the sink kind a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Key(String),
    Entry,
    Item,
    Kind(String),
}

/// `sinks.<name>.bucket (kv)`, `routes[].match.subjects`.
fn display(path: &[Segment]) -> String {
    let mut text = String::new();
    let mut kinds = Vec::new();
    for segment in path {
        match segment {
            Segment::Key(key) if text.is_empty() => text.push_str(key),
            Segment::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Segment::Entry => {
                text.push('.');
                text.push_str(ENTRY);
            }
            Segment::Item => text.push_str("[]"),
            Segment::Kind(kind) => kinds.push(kind.as_str()),
        }
    }
    match kinds.as_slice() {
        [] => text,
        kinds => format!("{text} ({})", kinds.join(", ")),
    }
}

/// The keys alone, as prose names them (`retry.backoff`).
fn key_names(path: &[Segment]) -> Vec<&str> {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Entry | Segment::Item | Segment::Kind(_) => None,
        })
        .collect()
}

/// Calls `visit` with every node below `shape` and its path.
fn each_node(shape: &Shape, path: &mut Vec<Segment>, visit: &mut dyn FnMut(&[Segment], &Shape)) {
    visit(path, shape);
    let mut below = |segment: Segment, child: &Shape, path: &mut Vec<Segment>| {
        path.push(segment);
        each_node(child, path, visit);
        path.pop();
    };
    match shape {
        Shape::Keys(keys) => {
            for (key, child) in keys {
                below(Segment::Key(key.clone()), child, path);
            }
        }
        Shape::Map(child) => below(Segment::Entry, child, path),
        Shape::List(child) => below(Segment::Item, child, path),
        Shape::Sink { common, kinds } => {
            for (key, child) in common {
                below(Segment::Key(key.clone()), child, path);
            }
            for (kind, keys) in kinds {
                path.push(Segment::Kind(kind.clone()));
                for (key, child) in keys {
                    below(Segment::Key(key.clone()), child, path);
                }
                path.pop();
            }
        }
        Shape::Leaf | Shape::Opaque => {}
    }
}

fn opaque_places(shape: &Shape) -> BTreeSet<String> {
    let mut places = BTreeSet::new();
    each_node(shape, &mut Vec::new(), &mut |path, node| {
        if *node == Shape::Opaque {
            places.insert(display(path));
        }
    });
    places
}

/// Replaces the node at `place` (as [`display`] writes it).
fn replace(shape: &mut Shape, place: &str, with: Shape) {
    fn walk(shape: &mut Shape, path: &mut Vec<Segment>, place: &str, with: &mut Option<Shape>) {
        if display(path) == place {
            *shape = with.take().expect("one place");
            return;
        }
        let mut below = |segment: Segment, child: &mut Shape, path: &mut Vec<Segment>| {
            path.push(segment);
            walk(child, path, place, with);
            path.pop();
        };
        match shape {
            Shape::Keys(keys) => {
                for (key, child) in keys {
                    below(Segment::Key(key.clone()), child, path);
                }
            }
            Shape::Map(child) => below(Segment::Entry, child, path),
            Shape::List(child) => below(Segment::Item, child, path),
            Shape::Sink { .. } | Shape::Leaf | Shape::Opaque => {}
        }
    }
    let mut with = Some(with);
    walk(shape, &mut Vec::new(), place, &mut with);
    assert!(with.is_none(), "no {place} in the shape");
}

fn keys(shape: Shape) -> BTreeMap<String, Shape> {
    match shape {
        Shape::Keys(keys) => keys,
        other => panic!("not a struct: {other:?}"),
    }
}

fn keys_of(names: &[&str]) -> Shape {
    Shape::Keys(
        names
            .iter()
            .map(|name| (name.to_string(), Shape::Leaf))
            .collect(),
    )
}

/// The types probed, by the names [`OPAQUE`] uses.
fn probed_types() -> Vec<(&'static str, Shape)> {
    use jetline::{sink, upcast::steps::HopConfig};
    vec![
        ("RawConfig", shape::<raw::RawConfig>()),
        ("ConsumerOverrides", shape::<raw::ConsumerOverrides>()),
        ("JetStreamSinkConfig", shape::<raw::JetStreamSinkConfig>()),
        ("KvSinkConfig", shape::<sink::kv::KvSinkConfig>()),
        (
            "PostgresSinkConfig",
            shape::<sink::postgres::PostgresSinkConfig>(),
        ),
        ("HttpSinkConfig", shape::<sink::http::HttpSinkConfig>()),
        ("HopConfig", shape::<HopConfig>()),
    ]
}

/// Every key the loader reads, as one shape.
fn config_shape() -> Shape {
    let mut types: BTreeMap<&str, Shape> = probed_types().into_iter().collect();
    let mut take = |name: &str| types.remove(name).expect("a probed type");
    let mut root = take("RawConfig");
    let overrides = keys(take("ConsumerOverrides"));

    // A ValueSpec's one key, and an AppendSpec's bounded form.
    let value_spec = keys_of(&["literal"]);
    let append_spec = Shape::Keys(BTreeMap::from([
        ("value".to_owned(), value_spec.clone()),
        ("max_len".to_owned(), Shape::Leaf),
        ("literal".to_owned(), Shape::Leaf),
    ]));
    let mut kv = take("KvSinkConfig");
    replace(&mut kv, "on.<name>.set.<name>", value_spec.clone());
    replace(&mut kv, "on.<name>.increment.<name>", value_spec);
    replace(&mut kv, "on.<name>.append.<name>", append_spec);

    let mut hop = take("HopConfig");
    for place in [
        "steps[].set.value",
        "steps[].set_default.value",
        "steps[].convert.multiply",
    ] {
        replace(&mut hop, place, Shape::Leaf);
    }

    let mut common = overrides.clone();
    common.insert("type".to_owned(), Shape::Leaf);
    common.insert("schema_version".to_owned(), Shape::Leaf);
    let kinds = BTreeMap::from([
        ("jetstream".to_owned(), keys(take("JetStreamSinkConfig"))),
        ("kv".to_owned(), keys(kv)),
        ("postgres".to_owned(), keys(take("PostgresSinkConfig"))),
        ("http".to_owned(), keys(take("HttpSinkConfig"))),
        // validate.rs's NoKeys: a custom sink takes the common keys only.
        ("custom".to_owned(), BTreeMap::new()),
    ]);
    replace(&mut root, "sinks.<name>", Shape::Sink { common, kinds });

    let mut consumers = overrides;
    consumers.insert("durable_prefix".to_owned(), Shape::Leaf);
    replace(&mut root, "consumers", Shape::Keys(consumers));
    replace(&mut root, "upcasters.<name>", Shape::List(Box::new(hop)));
    let left = opaque_places(&root);
    assert!(left.is_empty(), "values without a model: {left:?}");
    root
}

/// Every key path of `shape`: each path ending in a key.
fn key_paths(shape: &Shape) -> Vec<Vec<Segment>> {
    let mut paths = Vec::new();
    each_node(shape, &mut Vec::new(), &mut |path, _| {
        if matches!(path.last(), Some(Segment::Key(_))) {
            paths.push(path.to_vec());
        }
    });
    paths
}

/// The hand-written parts of [`config_shape`] hold to the code: the probe
/// finds `serde_json::Value` exactly where [`OPAQUE`] says; the sink keys
/// shared by every kind are the consumer settings; the kinds are the
/// loader's; and the forms read by custom `Deserialize` code are accepted
/// with exactly the keys modelled.
#[test]
fn the_config_shape_follows_the_types() {
    for (name, shape) in probed_types() {
        let expected: BTreeSet<String> = OPAQUE
            .iter()
            .filter(|(type_name, ..)| *type_name == name)
            .map(|(_, place, _)| place.to_string())
            .collect();
        assert_eq!(
            opaque_places(&shape),
            expected,
            "values of {name} read on elsewhere"
        );
    }
    let overrides: BTreeSet<String> = keys(shape::<raw::ConsumerOverrides>())
        .into_keys()
        .collect();
    let common: BTreeSet<String> = raw::SINK_COMMON_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        overrides, common,
        "SINK_COMMON_KEYS are ConsumerOverrides' keys"
    );
    let Shape::Map(sink) = &keys(config_shape())["sinks"] else {
        panic!("sinks is a map");
    };
    let Shape::Sink { kinds, .. } = sink.as_ref() else {
        panic!("a sink block");
    };
    let kinds: Vec<&str> = kinds.keys().map(String::as_str).collect();
    let mut known = raw::SINK_TYPES.to_vec();
    known.sort_unstable();
    assert_eq!(kinds, known, "the sink kinds validate.rs reads");

    let kv_sink = |rules: &str| {
        config_yaml(
            "nats://127.0.0.1:4222",
            &format!(
                "sources: {{ orders: {{ stream: ORDERS }} }}\n\
                 consumers: {{ durable_prefix: readme }}\n\
                 sinks:\n  summary:\n    type: kv\n    bucket: SUMMARY\n    on:\n      \
                 orders.OrderShipped: {rules}\n"
            ),
        )
    };
    let modelled = "{ set: { a: { literal: occurred_at } }, increment: { b: { literal: 2 } }, \
                    append: { c: { value: { literal: x }, max_len: 3 }, d: { literal: y } } }";
    if let Err(errors) = jetline::config::load_str(&kv_sink(modelled)) {
        panic!("the modelled keys are accepted: {errors}");
    }
    for beyond in [
        "{ set: { a: { literal: x, other: 1 } } }",
        "{ append: { c: { value: x, max_len: 3, other: 1 } } }",
    ] {
        assert!(
            jetline::config::load_str(&kv_sink(beyond)).is_err(),
            "a key beyond the model is refused: {beyond}"
        );
    }
}

/// A README YAML block: where its keys stand in a configuration file.
enum Placement {
    /// Top-level keys of the configuration.
    Root,
    /// Sink blocks by name, as under `sinks:`.
    Sinks,
    /// Not Jetline's: a CI workflow, named on its first line.
    Workflow,
}

/// Where `yaml` stands: at the root when every top-level key is one of the
/// configuration's, a sink block when each of its values has a `type`.
fn placement(
    block: &Block,
    yaml: &serde_yaml_ng::Value,
    root_keys: &BTreeSet<String>,
) -> Option<Placement> {
    if block.text.starts_with("# .github/") {
        return Some(Placement::Workflow);
    }
    let mapping = yaml.as_mapping()?;
    let top: Vec<&str> = mapping.keys().filter_map(|key| key.as_str()).collect();
    if top.len() == mapping.len() && top.iter().all(|key| root_keys.contains(*key)) {
        return Some(Placement::Root);
    }
    mapping
        .values()
        .all(|block| block.get("type").is_some())
        .then_some(Placement::Sinks)
}

fn yaml_key(key: &serde_yaml_ng::Value) -> String {
    match key {
        serde_yaml_ng::Value::String(text) => text.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// The key paths `yaml` writes at `path`, following `shape`; keys the
/// shape does not have go to `unknown`.
fn yaml_paths(
    yaml: &serde_yaml_ng::Value,
    shape: &Shape,
    path: &mut Vec<Segment>,
    found: &mut BTreeSet<Vec<Segment>>,
    unknown: &mut Vec<String>,
) {
    let mut below =
        |segment: Segment, value: &serde_yaml_ng::Value, child: &Shape, path: &mut Vec<Segment>| {
            path.push(segment);
            if matches!(path.last(), Some(Segment::Key(_))) {
                found.insert(path.clone());
            }
            yaml_paths(value, child, path, found, unknown);
            path.pop();
        };
    // Collected apart: `below` holds `unknown` until the match ends.
    let mut strays = Vec::new();
    match (shape, yaml) {
        (Shape::Keys(keys), serde_yaml_ng::Value::Mapping(mapping)) => {
            for (key, value) in mapping {
                let key = yaml_key(key);
                match keys.get(&key) {
                    Some(child) => below(Segment::Key(key), value, child, path),
                    None => strays.push(format!("{}.{key}", display(path))),
                }
            }
        }
        (Shape::Map(child), serde_yaml_ng::Value::Mapping(mapping)) => {
            for value in mapping.values() {
                below(Segment::Entry, value, child, path);
            }
        }
        (Shape::List(child), serde_yaml_ng::Value::Sequence(items)) => {
            for value in items {
                below(Segment::Item, value, child, path);
            }
        }
        (Shape::Sink { common, kinds }, serde_yaml_ng::Value::Mapping(mapping)) => {
            let kind = mapping
                .get("type")
                .and_then(|kind| kind.as_str())
                .and_then(|kind| kinds.get_key_value(kind));
            for (key, value) in mapping {
                let key = yaml_key(key);
                if let Some(child) = common.get(&key) {
                    below(Segment::Key(key), value, child, path);
                } else if let Some((kind, child)) =
                    kind.and_then(|(kind, keys)| Some((kind, keys.get(&key)?)))
                {
                    path.push(Segment::Kind(kind.clone()));
                    below(Segment::Key(key), value, child, path);
                    path.pop();
                } else {
                    strays.push(format!("{}.{key}", display(path)));
                }
            }
        }
        _ => {}
    }
    unknown.extend(strays);
}

/// The README's YAML blocks that are Jetline configuration, parsed, with
/// the line of each and where it stands.
fn config_blocks(
    markdown: &Markdown,
    shape: &Shape,
) -> Vec<(usize, serde_yaml_ng::Value, Placement)> {
    let root_keys: BTreeSet<String> = match shape {
        Shape::Keys(keys) => keys.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    markdown
        .blocks
        .iter()
        .filter(|block| block.lang == "yaml")
        .filter_map(|block| {
            let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&block.text)
                .unwrap_or_else(|err| panic!("README.md:{}: not YAML: {err}", block.line));
            match placement(block, &yaml, &root_keys) {
                Some(Placement::Workflow) => None,
                Some(placement) => Some((block.line, yaml, placement)),
                None => panic!(
                    "README.md:{}: a YAML block that is neither configuration (top-level keys \
                     of the file) nor sink blocks (each with a `type`), nor a CI workflow \
                     (`# .github/...` on its first line)",
                    block.line
                ),
            }
        })
        .collect()
}

/// Key paths a code span of the prose names: a mapping's keys
/// (`{ literal: occurred_at }`, `rename: { from, to }`), or a key path
/// written with dots (`limits.max_message_bytes`, `pool_size`).
fn span_key_paths(span: &str) -> Vec<Vec<String>> {
    fn keys_of(yaml: &serde_yaml_ng::Value, prefix: &[String], into: &mut Vec<Vec<String>>) {
        if let Some(mapping) = yaml.as_mapping() {
            for (key, value) in mapping {
                let mut path = prefix.to_vec();
                path.extend(yaml_key(key).split('.').map(str::to_owned));
                into.push(path.clone());
                keys_of(value, &path, into);
            }
        }
    }
    let is_key_path = |text: &str| {
        !text.is_empty()
            && text.split('.').all(|key| {
                key.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
    };
    let mut paths = Vec::new();
    if is_key_path(span) {
        paths.push(span.split('.').map(str::to_owned).collect());
    } else if let Ok(yaml) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(span) {
        keys_of(&yaml, &[], &mut paths);
    }
    paths
}

/// Every key the loader accepts is documented: written at its place in one
/// of the README's configuration examples, or named in a code span whose
/// key path ends the key's path (`retry.backoff`, `unset`). A sink's
/// consumer settings are documented once, under `consumers:`, which the
/// README says each sink may override.
#[test]
fn readme_documents_every_config_key() {
    let markdown = readme();
    let shape = config_shape();
    let sink = match &keys(shape.clone())["sinks"] {
        Shape::Map(sink) => sink.as_ref().clone(),
        other => panic!("sinks is a map: {other:?}"),
    };
    let mut written = BTreeSet::new();
    let mut unknown = Vec::new();
    for (_, yaml, placement) in config_blocks(&markdown, &shape) {
        match placement {
            Placement::Root => {
                yaml_paths(&yaml, &shape, &mut Vec::new(), &mut written, &mut unknown)
            }
            Placement::Sinks => {
                let mut path = vec![Segment::Key("sinks".to_owned()), Segment::Entry];
                for block in yaml.as_mapping().into_iter().flat_map(|m| m.values()) {
                    yaml_paths(block, &sink, &mut path, &mut written, &mut unknown);
                }
            }
            Placement::Workflow => {}
        }
    }
    assert!(
        unknown.is_empty(),
        "README keys the types do not have: {unknown:?}"
    );
    let named: Vec<Vec<String>> = markdown
        .spans
        .iter()
        .flat_map(|(_, span)| span_key_paths(span))
        .collect();
    let documented = |path: &[Segment]| {
        let keys = key_names(path);
        written.contains(path)
            || named
                .iter()
                .any(|name| keys.ends_with(&name.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let undocumented: Vec<String> = key_paths(&shape)
        .iter()
        .filter(|path| {
            let consumer_setting = match path.as_slice() {
                [
                    Segment::Key(sinks),
                    Segment::Entry,
                    Segment::Key(key),
                    rest @ ..,
                ] if sinks == "sinks" && raw::SINK_COMMON_KEYS.contains(&key.as_str()) => {
                    let mut under_consumers = vec![
                        Segment::Key("consumers".to_owned()),
                        Segment::Key(key.clone()),
                    ];
                    under_consumers.extend_from_slice(rest);
                    Some(under_consumers)
                }
                _ => None,
            };
            !documented(consumer_setting.as_deref().unwrap_or(path))
        })
        .map(|path| display(path))
        .collect();
    assert!(
        undocumented.is_empty(),
        "config keys the README does not document:\n{}",
        undocumented.join("\n")
    );
}

/// The configuration every README fragment is placed into: a source, a
/// sink and a route, so that a fragment of any part of the file loads.
const BASE_CONFIG: &str = r#"
nats: { url: "nats://127.0.0.1:4222" }
sources: { orders: { stream: ORDERS, subjects: ["orders.>"] } }
sinks: { orders_out: { type: jetstream, subject: "projections.orders.{aggregate_id}" } }
routes: [ { name: all-orders, from: orders, to: [orders_out] } ]
"#;

/// Every README configuration example, placed into [`BASE_CONFIG`] (its
/// top-level mappings merged key by key, sink blocks under `sinks:`),
/// loads, and passes the checks against the example schemas (upcaster
/// steps are read there), but for a `schemas.types` entry naming a message
/// of the reader's own schemas (`legacy.OrderCreatedV1`).
#[test]
fn readme_config_examples_are_accepted() {
    let markdown = readme();
    let shape = config_shape();
    let blocks = config_blocks(&markdown, &shape);
    assert!(blocks.len() > 5, "the README's configuration examples");
    let mut refused = Vec::new();
    for (line, yaml, placement) in blocks {
        let mut config: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(BASE_CONFIG).expect("the base configuration");
        let base = config.as_mapping_mut().expect("a mapping");
        let Some(fragment) = yaml.as_mapping() else {
            continue;
        };
        match placement {
            Placement::Root => {
                for (key, value) in fragment {
                    match (base.get_mut(key), value) {
                        (
                            Some(serde_yaml_ng::Value::Mapping(existing)),
                            serde_yaml_ng::Value::Mapping(entries),
                        ) => existing.extend(entries.clone()),
                        _ => {
                            base.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            Placement::Sinks => base
                .get_mut("sinks")
                .and_then(|sinks| sinks.as_mapping_mut())
                .expect("the base's sinks")
                .extend(fragment.clone()),
            Placement::Workflow => continue,
        }
        let text = serde_yaml_ng::to_string(&config).expect("YAML written");
        let mut config = match jetline::config::load_str(&text) {
            Ok(config) => config,
            Err(errors) => {
                refused.push(format!("README.md:{line}: {errors}\n{text}"));
                continue;
            }
        };
        if config.schemas.dir.is_relative() {
            config.schemas.dir = root().join(&config.schemas.dir);
        }
        match jetline::prepare(config) {
            // `schemas.types` may name messages of the reader's own schemas.
            Ok(_) | Err(RunError::Schema(SchemaError::Mapping { .. })) => {}
            Err(error) => refused.push(format!("README.md:{line}: {error}")),
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n\n"));
}
