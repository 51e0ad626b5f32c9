//! Sinks supplied by a program that embeds the library: `type: custom` in the
//! config names a sink that the program registers by name in [`CustomSinks`]
//! before calling [`crate::run_with`]. The pipeline treats them like any
//! other sink: same lanes, retries, dead letters and acks.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::Future;

use super::{Applied, Event, Sink, SinkError};

type BoxedApply<'a> = Pin<Box<dyn Future<Output = Result<Applied, SinkError>> + Send + 'a>>;

/// The object-safe form of [`Sink`], implemented for every sink.
pub trait DynSink: Send + Sync + 'static {
    fn apply_boxed<'a>(&'a self, event: &'a Event) -> BoxedApply<'a>;
}

impl<S: Sink> DynSink for S {
    fn apply_boxed<'a>(&'a self, event: &'a Event) -> BoxedApply<'a> {
        Box::pin(self.apply(event))
    }
}

/// A registered custom sink.
#[derive(Clone)]
pub struct CustomSink(Arc<dyn DynSink>);

impl Sink for CustomSink {
    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        self.0.apply_boxed(event).await
    }
}

/// Custom sinks by the name their `sinks:` entry has in the config.
#[derive(Clone, Default)]
pub struct CustomSinks {
    sinks: HashMap<String, CustomSink>,
}

impl CustomSinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `sink` for the config's sink named `name`.
    pub fn register(mut self, name: &str, sink: impl Sink) -> Self {
        self.sinks
            .insert(name.to_owned(), CustomSink(Arc::new(sink)));
        self
    }

    pub fn get(&self, name: &str) -> Option<CustomSink> {
        self.sinks.get(name).cloned()
    }
}
