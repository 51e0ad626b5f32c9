//! The aggregates parked by `on_dead_letter: park_key`, kept in a KV bucket
//! of Jetline's own (`<dead_letter.stream>_PARKED`), so a restart or a
//! takeover does not apply an aggregate's events past one that was
//! dead-lettered. One key per (consumer, aggregate):
//! `<consumer>.<aggregate id in unpadded base64url>`.
//!
//! **Invariant:** an aggregate is recorded as parked before the event that
//! parks it is terminated, so no crash can forget it.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::TryStreamExt;

use super::DeadLetterError;

/// Longest key written: a longer aggregate id is parked in memory only.
const MAX_KEY_LEN: usize = 1024;

/// The bucket holding the parked aggregates of every consumer.
pub fn bucket_name(dead_letter_stream: &str) -> String {
    format!("{dead_letter_stream}_PARKED")
}

/// One consumer's parked aggregates.
#[derive(Clone)]
pub struct Parked {
    store: kv::Store,
    consumer: String,
}

impl Parked {
    /// Opens the bucket, creating it when missing.
    pub async fn open(
        jetstream: &jetstream::Context,
        dead_letter_stream: &str,
        consumer: &str,
    ) -> Result<Self, DeadLetterError> {
        let bucket = bucket_name(dead_letter_stream);
        let failed = |message: String| DeadLetterError::Stream {
            stream: bucket.clone(),
            message,
        };
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "jetline: aggregates parked after a dead letter".into(),
            history: 1,
            ..Default::default()
        };
        let store = crate::nats::key_value(jetstream, config)
            .await
            .map_err(failed)?;
        Ok(Self {
            store,
            consumer: consumer.to_owned(),
        })
    }

    /// The aggregates this consumer has parked.
    pub async fn load(&self) -> Result<Vec<String>, DeadLetterError> {
        let all = list(&self.store).await?;
        Ok(all.get(&self.consumer).cloned().unwrap_or_default())
    }

    /// Records `aggregate_id` as parked; an id too long for a key is not
    /// recorded (and said so by the caller's log).
    pub async fn park(&self, aggregate_id: &str) -> Result<bool, DeadLetterError> {
        let Some(key) = self.key(aggregate_id) else {
            return Ok(false);
        };
        self.store
            .put(key, aggregate_id.to_owned().into_bytes().into())
            .await
            .map(|_| true)
            .map_err(|err| DeadLetterError::Publish(format!("park {aggregate_id:?}: {err}")))
    }

    pub async fn unpark(&self, aggregate_id: &str) -> Result<(), DeadLetterError> {
        let Some(key) = self.key(aggregate_id) else {
            return Ok(());
        };
        self.store
            .purge(key)
            .await
            .map_err(|err| DeadLetterError::Publish(format!("unpark {aggregate_id:?}: {err}")))
    }

    fn key(&self, aggregate_id: &str) -> Option<String> {
        let key = format!("{}.{}", self.consumer, URL_SAFE_NO_PAD.encode(aggregate_id));
        (key.len() <= MAX_KEY_LEN).then_some(key)
    }
}

/// Every consumer's parked aggregates, from the bucket of `dead_letter_stream`
/// (empty when nothing was ever parked).
pub async fn all(
    jetstream: &jetstream::Context,
    dead_letter_stream: &str,
) -> Result<BTreeMap<String, Vec<String>>, DeadLetterError> {
    match jetstream
        .get_key_value(bucket_name(dead_letter_stream))
        .await
    {
        Ok(store) => list(&store).await,
        Err(_) => Ok(BTreeMap::new()),
    }
}

async fn list(store: &kv::Store) -> Result<BTreeMap<String, Vec<String>>, DeadLetterError> {
    let failed = |err: String| DeadLetterError::Stream {
        stream: store.name.clone(),
        message: err,
    };
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys
            .try_collect()
            .await
            .map_err(|err| failed(err.to_string()))?,
        Err(err) => return Err(failed(err.to_string())),
    };
    let mut parked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in keys {
        let Some((consumer, encoded)) = key.split_once('.') else {
            continue;
        };
        let Some(aggregate_id) = URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        else {
            continue;
        };
        parked
            .entry(consumer.to_owned())
            .or_default()
            .push(aggregate_id);
    }
    Ok(parked)
}
