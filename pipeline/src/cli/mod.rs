//! The operator CLI: one file per subcommand.

pub mod check;
pub mod dlq;
pub mod project;
pub mod publish;
pub mod ready;
pub mod rebuild;
pub mod replay;
pub mod run;
pub mod schema;
pub mod status;
pub mod upcast;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "jetline",
    version,
    about = "Projections from NATS JetStream event streams"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "JETLINE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Check the configuration, schemas and routes without connecting to NATS.
    Check(ConfigArg),
    /// Publish JSON envelopes (one per line) to a subject.
    Publish {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: publish::PublishArgs,
    },
    /// Inspect and redrive the dead-letter stream.
    Dlq {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Print each consumer's pending, ack pending, redelivered and lag in seconds.
    Status(ConfigArg),
    /// Upcast one JSON event (envelope or payload) from standard input and print it.
    Upcast(upcast::UpcastArgs),
    /// Apply one sink's rules to JSON envelopes from standard input (one per
    /// line) without any server, and print what it would write.
    Project(project::ProjectArgs),
    /// Exit 0 when the Jetline running with this configuration answers /readyz
    /// with 200 (a container's health check), 1 with the reason otherwise.
    Ready(ConfigArg),
    /// Rebuild one sink's projection: reposition its consumers (optionally
    /// emptying the projection first) and apply until caught up.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: replay::ReplayArgs,
    },
    /// Rebuild one sink's projection with zero downtime: build the next
    /// generation beside the live one, switch readers to it once caught up,
    /// and retire the old one's consumers.
    Rebuild {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: rebuild::RebuildArgs,
    },
    /// Compare the schemas with an older copy: what breaks stored events.
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The YAML configuration file. Global, so that `dlq list --config FILE`
    /// reads as `dlq --config FILE list`.
    #[arg(
        long,
        short,
        global = true,
        env = "JETLINE_CONFIG",
        default_value = "config/jetline.yaml"
    )]
    pub config: PathBuf,
}
