//! `jetline publish`: publishes JSON envelopes (one per line) to a subject,
//! validated against the schemas and encoded as binary protobuf (default) or
//! JSON; `--raw` sends lines as they are, to try invalid input. Publishes are
//! pipelined: all sent, then every ack awaited.

use std::{io::BufRead, sync::Arc};

use async_nats::HeaderMap;

use crate::{
    Config, RunError,
    envelope::{CONTENT_TYPE_JSON, Encoding},
    nats,
    telemetry::Readiness,
    template::Template,
};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Subject to publish to; may use `{aggregate_id}`, `{event_type}`, ...
    #[arg(long)]
    pub subject: String,
    /// Encoding written: protobuf or json.
    #[arg(long, value_enum, default_value_t = WireFormat::Protobuf)]
    pub format: WireFormat,
    /// Publish each line as it is (Content-Type: application/json), unvalidated.
    #[arg(long)]
    pub raw: bool,
    /// File of JSON envelopes, one per line (default: standard input).
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    Protobuf,
    Json,
}

pub async fn run(config: Config, args: PublishArgs) -> Result<String, RunError> {
    let prepared = crate::prepare(config)?;
    // A stream stores only concrete subjects: a wildcard here is a mistake.
    let subject = Template::parse_subject(&args.subject)
        .map_err(|err| RunError::Usage(format!("--subject: {err}")))?;
    if args.raw && subject.has_placeholders() {
        return Err(RunError::Usage(format!(
            "--subject {:?}: --raw sends lines unread, so the subject cannot use placeholders",
            args.subject
        )));
    }
    let lines = read_lines(args.file.as_deref())?;
    let client = nats::connect(&prepared.config.nats, Arc::new(Readiness::default())).await?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let encoding = match args.format {
        WireFormat::Protobuf => Encoding::Protobuf,
        WireFormat::Json => Encoding::Json,
    };

    // Sent in windows: async-nats holds at most 5,000 acks in flight.
    let mut acks = Vec::with_capacity(WINDOW);
    for (number, line) in lines.iter().enumerate() {
        let mut headers = HeaderMap::new();
        let (target, body) = if args.raw {
            headers.insert("Content-Type", CONTENT_TYPE_JSON);
            (args.subject.clone(), line.as_bytes().to_vec())
        } else {
            let envelope = prepared
                .decoder
                .decode(Some(CONTENT_TYPE_JSON), line.as_bytes())
                .map_err(|err| RunError::Usage(format!("line {}: {err}", number + 1)))?;
            let target = subject
                .render_subject(&envelope, "")
                .map_err(|err| RunError::Usage(format!("line {}: {err}", number + 1)))?;
            headers.insert("Content-Type", encoding.content_type());
            headers.insert("Nats-Msg-Id", envelope.event_id.as_str());
            let body = envelope
                .encode(encoding)
                .map_err(|err| RunError::Usage(format!("line {}: {err}", number + 1)))?;
            (target, body)
        };
        let ack = jetstream
            .publish_with_headers(target, headers, body.into())
            .await
            .map_err(|err| RunError::Publish(format!("publish of line {}: {err}", number + 1)))?;
        acks.push((number, ack));
        if acks.len() == WINDOW {
            await_acks(&mut acks).await?;
        }
    }
    await_acks(&mut acks).await?;
    Ok(format!("published {} events\n", lines.len()))
}

const WINDOW: usize = 1_000;

async fn await_acks(
    acks: &mut Vec<(usize, async_nats::jetstream::context::PublishAckFuture)>,
) -> Result<(), RunError> {
    for (number, ack) in acks.drain(..) {
        ack.await.map_err(|err| {
            RunError::Publish(format!("publish of line {} not acked: {err}", number + 1))
        })?;
    }
    Ok(())
}

fn read_lines(file: Option<&std::path::Path>) -> Result<Vec<String>, RunError> {
    let read_error = |err: std::io::Error| RunError::Usage(format!("cannot read input: {err}"));
    let lines: Vec<String> = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(read_error)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .map_err(read_error)?,
    };
    Ok(lines
        .into_iter()
        .filter(|line| !line.trim().is_empty())
        .collect())
}
