//! The KV sink: reads the key's document and revision, applies the event's
//! rule, and writes it back with compare-and-set on that revision; a
//! conflicting writer makes it read and try again.
//!
//! The documents it wrote last are kept in memory with their revisions, so
//! an aggregate's next event costs one round trip (the compare-and-set), not
//! two. The cache is only a guess: a revision that moved under it (another
//! writer, another replica) fails the compare-and-set and the key is read
//! again.
//!
//! **Invariant:** the written document records the event's source sequence,
//! and an event whose sequence is not above the recorded one is skipped: a
//! redelivery never applies twice. A delete writes a KV delete marker whose
//! body keeps that record, so a late redelivery cannot bring a deleted
//! document back.

use std::{collections::HashMap, sync::Mutex};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        kv::{self, EntryErrorKind, UpdateErrorKind},
    },
};
use serde_json::{Map, Value};

use super::{
    config::KvSinkConfig,
    document::{self, Change, Rules, invalid_key},
};
use crate::{
    sink::{Applied, Event, PayloadFields, Sink, SinkError, value::Position},
    telemetry,
};

/// Reads and writes of one event before a conflict is handed back as a
/// transient error (the event is then retried with backoff).
const MAX_CAS_ATTEMPTS: usize = 16;

/// Documents kept in memory, at most; past it the cache starts over (a miss
/// costs one read).
const CACHED_DOCUMENTS: usize = 16_384;

/// A document as this sink last wrote it, with the revision of that write.
type Cached = (Map<String, Value>, u64);

pub struct KvSink {
    name: String,
    jetstream: jetstream::Context,
    store: kv::Store,
    rules: Rules,
    payload_fields: PayloadFields,
    written: Mutex<HashMap<String, Cached>>,
    /// The server's `max_payload`, read once: a larger document is refused.
    max_payload: usize,
}

impl KvSink {
    /// Opens the bucket, creating it when missing.
    pub async fn open(
        jetstream: jetstream::Context,
        name: &str,
        config: &KvSinkConfig,
    ) -> Result<Self, SinkError> {
        let rules = Rules::new(config)?;
        let bucket = kv::Config {
            bucket: config.bucket.clone(),
            history: config.history,
            max_age: config.ttl.unwrap_or_default(),
            ..Default::default()
        };
        let store = crate::nats::key_value(&jetstream, bucket)
            .await
            .map_err(|err| {
                SinkError::Setup(format!("cannot create bucket {}: {err}", config.bucket))
            })?;
        Ok(Self {
            name: name.to_owned(),
            max_payload: jetstream.client().server_info().max_payload,
            jetstream,
            store,
            payload_fields: rules.payload_fields(),
            rules,
            written: Mutex::new(HashMap::new()),
        })
    }

    /// The document and revision this sink wrote last for `key`, taken out
    /// of the cache (one event per key is applied at a time).
    fn take_cached(&self, key: &str) -> Option<Cached> {
        self.written.lock().ok()?.remove(key)
    }

    fn cache(&self, key: String, document: Map<String, Value>, revision: u64) {
        if let Ok(mut written) = self.written.lock() {
            if written.len() >= CACHED_DOCUMENTS {
                written.clear();
            }
            written.insert(key, (document, revision));
        }
    }

    /// The key's document and revision (0 when the key never existed). A
    /// delete marker reads as the record it carries.
    async fn read(&self, key: &str) -> Result<(Map<String, Value>, u64), SinkError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|err| match err.kind() {
                EntryErrorKind::InvalidKey => invalid_key(key),
                EntryErrorKind::TimedOut => SinkError::Timeout(format!("reading key {key}")),
                EntryErrorKind::Other => SinkError::KeyValue(err.to_string()),
            })?;
        let Some(entry) = entry else {
            return Ok((Map::new(), 0));
        };
        let document = match entry.operation {
            kv::Operation::Put => document::parse(&entry.value),
            // A marker written by someone else holds no record: start over.
            kv::Operation::Delete | kv::Operation::Purge => {
                Ok(document::parse(&entry.value).unwrap_or_default())
            }
        }
        .map_err(|err| SinkError::Document {
            key: key.to_owned(),
            message: err.to_string(),
        })?;
        Ok((document, entry.revision))
    }

    /// Writes `document` if the key is still at `revision`: the new
    /// revision, or `None` when another writer got there first.
    async fn put(
        &self,
        key: &str,
        document: &Map<String, Value>,
        revision: u64,
    ) -> Result<Option<u64>, SinkError> {
        let body = serde_json::to_vec(document).unwrap_or_default();
        // A document grown past the server's limit will not shrink on retry.
        let max_payload = self.max_payload;
        if body.len() > max_payload {
            return Err(SinkError::TooLarge {
                subject: key.to_owned(),
                message: format!(
                    "document of {} bytes, the server takes {max_payload}",
                    body.len()
                ),
            });
        }
        match self.store.update(key, body.into(), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(err) => match err.kind() {
                UpdateErrorKind::WrongLastRevision => Ok(None),
                UpdateErrorKind::InvalidKey => Err(invalid_key(key)),
                UpdateErrorKind::TimedOut => Err(SinkError::Timeout(format!("writing key {key}"))),
                UpdateErrorKind::Other => Err(SinkError::KeyValue(err.to_string())),
            },
        }
    }

    /// Writes a delete marker carrying `record` if the key is still at
    /// `revision`: the marker's revision, or `None` when another writer got
    /// there first.
    async fn delete(
        &self,
        key: &str,
        record: &Map<String, Value>,
        revision: u64,
    ) -> Result<Option<u64>, SinkError> {
        // The client's delete cannot carry a body: publish the marker as it
        // would, with the record as body.
        let subject = format!(
            "{}{key}",
            self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix)
        );
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            revision.to_string().as_str(),
        );
        let body = serde_json::to_vec(record).unwrap_or_default();
        let publish_error = |kind: PublishErrorKind, message: String| match kind {
            PublishErrorKind::WrongLastSequence => None,
            PublishErrorKind::TimedOut => Some(SinkError::Timeout(format!("deleting key {key}"))),
            // A document grown past the server's limit will not shrink on retry.
            PublishErrorKind::MaxPayloadExceeded => Some(SinkError::TooLarge {
                subject: key.to_owned(),
                message,
            }),
            PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::Other => Some(SinkError::KeyValue(message)),
        };
        let ack = match self
            .jetstream
            .publish_with_headers(subject, headers, body.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(err) => match publish_error(err.kind(), err.to_string()) {
                None => Ok(None),
                Some(error) => Err(error),
            },
        }
    }
}

impl Sink for KvSink {
    fn payload_fields(&self) -> Option<&PayloadFields> {
        Some(&self.payload_fields)
    }

    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        let Some((rule, key)) = self.rules.target(event)? else {
            return Ok(Applied::Skipped);
        };
        let position = Position::of(event);
        let mut cached = self.take_cached(&key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (document, revision) = match cached.take() {
                Some(cached) => cached,
                None => self.read(&key).await?,
            };
            let change = rule.change(document, &self.name, &key, &event.envelope, position)?;
            let written = match change {
                Change::AlreadyApplied(document) => {
                    self.cache(key, document, revision);
                    return Ok(Applied::Skipped);
                }
                Change::Delete(record) => {
                    let written = self.delete(&key, &record, revision).await?;
                    written.map(|revision| (record, revision))
                }
                Change::Put(document) => {
                    let written = self.put(&key, &document, revision).await?;
                    written.map(|revision| (document, revision))
                }
            };
            if let Some((document, revision)) = written {
                self.cache(key, document, revision);
                return Ok(Applied::Written);
            }
            telemetry::sink_conflict(&self.name);
        }
        Err(SinkError::Conflict { key })
    }
}
