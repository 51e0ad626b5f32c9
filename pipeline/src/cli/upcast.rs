//! `jetline upcast`: runs one event through the configured chains and prints
//! the result as JSON, so that users test their upcasters without a server.
//!
//! The input (standard input) is either a whole JSON envelope (it has a
//! `payload` and an `eventType`) or just a payload, whose type and version
//! then come from `--type` and `--from-version`. The output has the same form.

use prost_reflect::{DeserializeOptions, DynamicMessage};

use super::ConfigArg;
use crate::{
    Prepared,
    config::UnknownFields,
    envelope::{CONTENT_TYPE_JSON, DecodeError, NoJsonForm},
    upcast::UpcastError,
};

#[derive(Debug, clap::Args)]
pub struct UpcastArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Event type of a bare payload, e.g. `orders.OrderCreated`.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Schema version of a bare payload.
    #[arg(long)]
    pub from_version: Option<u32>,
    /// Version to upcast to, as a sink's `schema_version` pin (default: the newest).
    #[arg(long)]
    pub to_version: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpcastCommandError {
    #[error("the input is not JSON: {0}")]
    Json(String),
    #[error("a bare payload needs --type and --from-version")]
    MissingType,
    #[error("--{flag} {given} disagrees with the envelope's {found}")]
    Disagrees {
        flag: &'static str,
        given: String,
        found: String,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    #[error(transparent)]
    NoJsonForm(#[from] NoJsonForm),
}

/// Upcasts the event in `input` and returns it as JSON, in the form it came.
pub fn upcast_json(
    prepared: &Prepared,
    args: &UpcastArgs,
    input: &[u8],
) -> Result<serde_json::Value, UpcastCommandError> {
    let document = crate::strict_json::parse(input).map_err(UpcastCommandError::Json)?;
    let is_envelope = document.get("payload").is_some()
        && (document.get("eventType").is_some() || document.get("event_type").is_some());
    if is_envelope {
        let mut envelope = prepared.decoder.decode(Some(CONTENT_TYPE_JSON), input)?;
        if let Some(given) = &args.event_type
            && *given != envelope.event_type
        {
            return Err(UpcastCommandError::Disagrees {
                flag: "type",
                given: given.clone(),
                found: envelope.event_type,
            });
        }
        if let Some(given) = args.from_version
            && given != envelope.schema_version
        {
            return Err(UpcastCommandError::Disagrees {
                flag: "from-version",
                given: given.to_string(),
                found: envelope.schema_version.to_string(),
            });
        }
        prepared.upcasters.upcast(&mut envelope, args.to_version)?;
        return Ok(envelope.to_json()?);
    }
    let (Some(event_type), Some(version)) = (&args.event_type, args.from_version) else {
        return Err(UpcastCommandError::MissingType);
    };
    let registry = prepared.decoder.registry();
    if !registry.contains(event_type) {
        return Err(DecodeError::UnknownType {
            event_type: event_type.clone(),
        }
        .into());
    }
    let descriptor =
        registry
            .resolve(event_type, version)
            .ok_or_else(|| DecodeError::UnknownVersion {
                event_type: event_type.clone(),
                version,
            })?;
    let options = DeserializeOptions::new()
        .deny_unknown_fields(prepared.config.schemas.unknown_fields == UnknownFields::Reject);
    let payload = DynamicMessage::deserialize_with_options(descriptor.clone(), document, &options)
        .map_err(|err| DecodeError::InvalidPayload {
            event_type: event_type.clone(),
            message: descriptor.full_name().to_owned(),
            detail: err.to_string(),
        })?;
    let upcasters = &prepared.upcasters;
    let target = upcasters.target_version(event_type, args.to_version)?;
    let upcast = upcasters.upcast_payload(event_type, version, target, payload)?;
    serde_json::to_value(&upcast).map_err(|err| UpcastCommandError::Json(err.to_string()))
}
