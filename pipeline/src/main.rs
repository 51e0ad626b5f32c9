//! The `jetline` binary: parses the command line, sets up logging, loads the
//! configuration and hands over to the library. Exit codes: 0 success,
//! 1 runtime failure, 2 configuration error, 3 a publish refused by its
//! expectation (another writer appended first).

use std::process::ExitCode;

use clap::Parser;
use jetline::cli::{self, Cli, Command, LogFormat};

/// The hot path allocates small, short-lived values on two threads; mimalloc
/// serves those from per-thread pages where glibc's malloc contends and
/// consolidates (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Operator commands print their result; only `run` logs at info.
    let level = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    init_tracing(cli.log_format, level);
    let result = match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Run(args) => run(&args.config),
        Command::Dlq { config, command } => dlq(&config.config, command),
        Command::Publish { config, args } => publish(&config.config, args),
        Command::Status(args) => status(&args.config),
        Command::Upcast(args) => upcast(&args),
        Command::Project(args) => project(&args),
        Command::Ready(args) => ready(&args.config),
        Command::Replay { config, args } => replay(&config.config, args),
        Command::Rebuild { config, args } => rebuild(&config.config, args),
        Command::Schema { command } => schema(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

impl From<jetline::RunError> for Failure {
    fn from(error: jetline::RunError) -> Self {
        Self {
            code: u8::try_from(error.exit_code()).unwrap_or(1),
            message: error.to_string(),
        }
    }
}

/// Writes a command's output. A reader that went away (`| head`) is not an
/// error of the command: `print!` would panic on the broken pipe.
fn emit(output: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {error}");
    }
}

fn load(path: &std::path::Path) -> Result<jetline::Config, Failure> {
    jetline::config::load(path).map_err(|errors| Failure {
        code: 2,
        message: format!("invalid configuration {}:\n{errors}", path.display()),
    })
}

fn check(path: &std::path::Path) -> Result<(), Failure> {
    let prepared = jetline::prepare(load(path)?)?;
    // This binary registers no custom sink: `run` would refuse them.
    let unregistered = jetline::unregistered_sinks(&prepared.config, &Default::default());
    if !unregistered.is_empty() {
        return Err(jetline::RunError::Config(jetline::config::ConfigErrors(unregistered)).into());
    }
    for unset in jetline::sink::unset_environment(&prepared.config, |variable| {
        std::env::var_os(variable).is_some()
    }) {
        eprintln!("warning: {unset} here; run refuses to start without it");
    }
    emit(&cli::check::summary(&prepared));
    Ok(())
}

/// The configuration at `path`, prepared, for a command that runs no
/// pipeline: the chains' warnings go to stderr.
fn prepare_offline(path: &std::path::Path) -> Result<jetline::Prepared, Failure> {
    let prepared = jetline::prepare(load(path)?)?;
    for warning in prepared.upcasters.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(prepared)
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|err| Failure {
            code: 1,
            message: format!("cannot read standard input: {err}"),
        })?;
    Ok(input)
}

fn upcast(args: &cli::upcast::UpcastArgs) -> Result<(), Failure> {
    let prepared = prepare_offline(&args.config.config)?;
    let input = read_stdin()?;
    let output = cli::upcast::upcast_json(&prepared, args, &input).map_err(|err| Failure {
        code: 1,
        message: err.to_string(),
    })?;
    emit(&format!(
        "{}\n",
        serde_json::to_string_pretty(&output).unwrap_or_default()
    ));
    Ok(())
}

/// Exits 1 at the first line `run` would dead-letter, 2 when the command
/// cannot run as asked (an unknown sink, a `--state` that is not documents).
fn project(args: &cli::project::ProjectArgs) -> Result<(), Failure> {
    let prepared = prepare_offline(&args.config.config)?;
    let state = match &args.state {
        Some(path) => Some(std::fs::read(path).map_err(|err| Failure {
            code: 2,
            message: format!("cannot read --state {}: {err}", path.display()),
        })?),
        None => None,
    };
    let input = read_stdin()?;
    let projection =
        cli::project::project(&prepared, args, state.as_deref(), &input).map_err(|err| {
            Failure {
                code: u8::try_from(err.exit_code()).unwrap_or(1),
                message: err.to_string(),
            }
        })?;
    emit(&match args.format {
        cli::project::ProjectFormat::Text => projection.text(),
        cli::project::ProjectFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&projection.json()).unwrap_or_default()
        ),
    });
    Ok(())
}

/// Exits 1 when the change breaks stored events, 2 when no comparison
/// could be made.
fn schema(command: cli::schema::SchemaCommand) -> Result<(), Failure> {
    let cli::schema::SchemaCommand::Diff(args) = command;
    let config = load(&args.config.config)?;
    let report = cli::schema::diff(&config, &args.against).map_err(|err| Failure {
        code: 2,
        message: err.to_string(),
    })?;
    emit(&match args.format {
        cli::schema::DiffFormat::Text => cli::schema::text(&report, &args.against),
        cli::schema::DiffFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&cli::schema::json(&report, &args.against))
                .unwrap_or_default()
        ),
    });
    if report.is_breaking() {
        return Err(Failure {
            code: 1,
            message: format!(
                "the schemas break stored events against {} ({})",
                args.against,
                cli::schema::counts(&report)
            ),
        });
    }
    Ok(())
}

fn run(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    runtime()?.block_on(cli::run::run(path.to_owned(), config))?;
    Ok(())
}

fn dlq(path: &std::path::Path, command: cli::dlq::DlqCommand) -> Result<(), Failure> {
    let config = load(path)?;
    let output = runtime()?.block_on(cli::dlq::run(config, command))?;
    emit(&output);
    Ok(())
}

fn publish(path: &std::path::Path, args: cli::publish::PublishArgs) -> Result<(), Failure> {
    let config = load(path)?;
    // Each stored event is printed as its ack arrives, also when a later one fails.
    let summary = runtime()?.block_on(cli::publish::run(config, args, &mut emit))?;
    emit(&summary);
    Ok(())
}

/// Exits 1 when some consumer could not be read (its line says why).
fn status(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    let statuses = runtime()?.block_on(cli::status::read(&config))?;
    emit(&cli::status::table(&statuses));
    let unreadable = statuses.iter().filter(|status| status.lag.is_err()).count();
    if unreadable > 0 {
        return Err(Failure {
            code: 1,
            message: format!(
                "{unreadable} of {} consumers could not be read",
                statuses.len()
            ),
        });
    }
    Ok(())
}

fn replay(path: &std::path::Path, args: cli::replay::ReplayArgs) -> Result<(), Failure> {
    let prepared = jetline::prepare(load(path)?)?;
    let mut progress = |line: &str| eprintln!("{line}");
    let report = runtime()?.block_on(cli::replay::replay(prepared, args, &mut progress))?;
    emit(&report);
    Ok(())
}

fn rebuild(path: &std::path::Path, args: cli::rebuild::RebuildArgs) -> Result<(), Failure> {
    let prepared = jetline::prepare(load(path)?)?;
    let mut progress = |line: &str| eprintln!("{line}");
    let report = runtime()?.block_on(cli::rebuild::rebuild(prepared, args, &mut progress))?;
    emit(&report);
    Ok(())
}

fn ready(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    runtime()?
        .block_on(cli::ready::probe(config.metrics.listen))
        .map_err(|err| Failure {
            code: 1,
            message: err.to_string(),
        })?;
    emit("ready\n");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|err| Failure {
        code: 1,
        message: format!("cannot start the runtime: {err}"),
    })
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal, not in a file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
