//! Traces, with `tracing:` set: per event and sink a `jetline.event` span,
//! child of the W3C trace context the source message carries (a new trace
//! when it carries none), with its decode, upcast and sink write as
//! children; the sink-write span is what the JetStream and HTTP sinks name
//! in the `traceparent` they send on. Spans go to an OTLP/HTTP collector in
//! protobuf, batched by a task on the runtime, flushed at shutdown.
//!
//! **Invariant:** with `tracing` absent no [`Traces`] exists: each consumer
//! holds `None`, and an event costs no span, no clock read and no
//! allocation; the pipeline only looks at that `Option`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, InstrumentationScope, KeyValue, StringValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    runtime,
    trace::{
        BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
        span_processor_with_async_runtime::BatchSpanProcessor,
    },
};

use crate::{
    config::TracingSettings,
    dead_letter::DeadLetterReason,
    envelope::Envelope,
    outcome::Outcome,
    sink::{Applied, ErrorClass, SinkError},
    source::Delivery,
    telemetry::Settled,
    text,
};

/// One event's time on one consumer: from its decode to its settlement.
pub const EVENT_SPAN: &str = "jetline.event";
/// The envelope and payload decoded and validated.
pub const DECODE_SPAN: &str = "jetline.decode";
/// The event upcast to the sink's version (only when it was).
pub const UPCAST_SPAN: &str = "jetline.upcast";
/// One call of the sink, until the destination confirmed or refused.
pub const SINK_WRITE_SPAN: &str = "jetline.sink.write";

/// The span attributes, each key written once.
pub mod attribute {
    pub const SOURCE: &str = "jetline.source";
    pub const SINK: &str = "jetline.sink";
    pub const STREAM: &str = "jetline.stream";
    pub const STREAM_SEQ: &str = "jetline.stream_seq";
    pub const ATTEMPT: &str = "jetline.attempt";
    pub const EVENT_ID: &str = "jetline.event_id";
    pub const EVENT_TYPE: &str = "jetline.event_type";
    pub const SCHEMA_VERSION: &str = "jetline.schema_version";
    pub const AGGREGATE_ID: &str = "jetline.aggregate_id";
    /// `applied`, `skipped`, `retried`, `dead_lettered`: the words of
    /// `jetline_events_total{outcome}`.
    pub const OUTCOME: &str = "jetline.outcome";
    pub const DEAD_LETTER_REASON: &str = "jetline.dead_letter.reason";
    pub const RETRY_AFTER_MS: &str = "jetline.retry_after_ms";
    pub const FROM_VERSION: &str = "jetline.upcast.from_version";
    pub const TO_VERSION: &str = "jetline.upcast.to_version";
    /// `written` or `skipped` for a write that succeeded.
    pub const WRITE_RESULT: &str = "jetline.write.result";
    /// `transient` or `permanent` for a write that failed.
    pub const ERROR_CLASS: &str = "jetline.error.class";
}

/// The W3C trace-context header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest one export may take: the collector being slow must not
/// hold the shutdown for long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans waiting for export; past it new spans are dropped, so a collector
/// that is down costs bounded memory.
const MAX_QUEUED_SPANS: usize = 16_384;

const EXPORT_BATCH_SPANS: usize = 2_048;

const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct TracesError(String);

/// The process's tracer provider and its exporter task.
#[derive(Debug)]
pub struct Traces {
    /// Taken by [`Traces::shutdown`].
    provider: Option<SdkTracerProvider>,
    tracer: SdkTracer,
}

impl Traces {
    /// Builds the exporter and starts its batch task; on the runtime.
    pub fn start(settings: &TracingSettings) -> Result<Self, TracesError> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .user_agent(concat!("jetline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| TracesError(error.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| TracesError(error.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_max_export_batch_size(EXPORT_BATCH_SPANS)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .with_max_export_timeout(EXPORT_TIMEOUT)
            .build();
        let processor = BatchSpanProcessor::builder(Logged::new(exporter), runtime::Tokio)
            .with_batch_config(batches)
            .build();
        // An event with a trace context follows its sampled flag; one
        // without starts a trace at `sample_ratio`.
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("jetline")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Self {
            provider: Some(provider),
            tracer,
        })
    }

    /// The tracer of one (source, sink) consumer.
    pub fn consumer(&self, source: &str, sink: &str) -> ConsumerTracer {
        ConsumerTracer {
            tracer: self.tracer.clone(),
            source: StringValue::from(Arc::<str>::from(source)),
            sink: StringValue::from(Arc::<str>::from(sink)),
        }
    }

    /// Exports what is still queued and stops the exporter. The SDK waits
    /// for its task by blocking, so this waits on a blocking thread while
    /// the runtime drives the task.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "Spans not all exported at shutdown"),
            Err(error) => tracing::warn!(error = %error, "Span export at shutdown failed"),
        }
    }
}

impl Drop for Traces {
    /// Not shut down (a start-up that failed half-way): the SDK would
    /// block the dropping thread, a runtime worker, on its export task, so
    /// another thread does it.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::Builder::new()
                .name("jetline-traces".into())
                .spawn(move || provider.shutdown());
        }
    }
}

/// One consumer's tracer: its source and sink names made span values once.
#[derive(Debug, Clone)]
pub struct ConsumerTracer {
    tracer: SdkTracer,
    source: StringValue,
    sink: StringValue,
}

impl ConsumerTracer {
    /// Opens the spans of a delivery decoded from `decode.0` to `decode.1`:
    /// the event span (from the start of the decode) and its decode span,
    /// ended. `decoded` is the envelope, or why decoding failed.
    pub fn event(
        &self,
        delivery: &Delivery,
        decode: (SystemTime, SystemTime),
        decoded: Result<&Envelope, &str>,
    ) -> Box<EventTrace> {
        let parent =
            TraceContextPropagator::new().extract(&SourceHeaders(delivery.headers.as_ref()));
        let mut attributes = vec![
            KeyValue::new(attribute::SOURCE, self.source.clone()),
            KeyValue::new(attribute::SINK, self.sink.clone()),
            KeyValue::new(
                attribute::STREAM,
                StringValue::from(Arc::clone(&delivery.stream)),
            ),
            KeyValue::new(attribute::STREAM_SEQ, count(delivery.stream_seq)),
            KeyValue::new(attribute::ATTEMPT, i64::from(delivery.attempt)),
        ];
        if let Ok(envelope) = decoded {
            attributes.extend([
                KeyValue::new(attribute::EVENT_ID, envelope.event_id.clone()),
                KeyValue::new(attribute::EVENT_TYPE, envelope.event_type.clone()),
                KeyValue::new(
                    attribute::SCHEMA_VERSION,
                    i64::from(envelope.schema_version),
                ),
                KeyValue::new(attribute::AGGREGATE_ID, envelope.aggregate_id.clone()),
            ]);
        }
        let span = self
            .tracer
            .span_builder(EVENT_SPAN)
            .with_kind(SpanKind::Consumer)
            .with_start_time(decode.0)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let event = parent.with_span(span);
        let mut decode_span = self
            .tracer
            .span_builder(DECODE_SPAN)
            .with_start_time(decode.0)
            .start_with_context(&self.tracer, &event);
        if let Err(error) = decoded {
            decode_span.set_status(Status::error(error.to_owned()));
        }
        decode_span.end_with_timestamp(decode.1);
        Box::new(EventTrace {
            tracer: self.tracer.clone(),
            event,
            write: None,
            carried: None,
        })
    }
}

/// One event's open spans on one consumer, travelling with it.
pub struct EventTrace {
    tracer: SdkTracer,
    /// Holds the `jetline.event` span.
    event: Context,
    /// The sink write's span while the sink works.
    write: Option<opentelemetry_sdk::trace::Span>,
    /// The trace context naming the sink write's span.
    carried: Option<Carried>,
}

impl std::fmt::Debug for EventTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTrace")
            .field("span", self.event.span().span_context())
            .finish_non_exhaustive()
    }
}

/// The W3C trace-context headers a sink sends on.
#[derive(Debug, Default)]
pub struct Carried {
    pub traceparent: String,
    /// Empty when the trace has no state.
    pub tracestate: String,
}

impl Injector for Carried {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE => self.tracestate = value,
            _ => {}
        }
    }
}

impl EventTrace {
    /// Records an upcast that ran from `started` until now, with its result.
    pub fn upcast(&self, started: SystemTime, result: Result<(u32, u32), &str>) {
        let ended = SystemTime::now();
        let mut span = self
            .tracer
            .span_builder(UPCAST_SPAN)
            .with_start_time(started)
            .start_with_context(&self.tracer, &self.event);
        match result {
            Ok((from, to)) => span.set_attributes([
                KeyValue::new(attribute::FROM_VERSION, i64::from(from)),
                KeyValue::new(attribute::TO_VERSION, i64::from(to)),
            ]),
            Err(error) => span.set_status(Status::error(error.to_owned())),
        }
        span.end_with_timestamp(ended);
    }

    /// Opens the sink write's span, and the trace context that names it.
    pub fn start_write(&mut self) {
        let span = self
            .tracer
            .span_builder(SINK_WRITE_SPAN)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &self.event);
        let mut carried = Carried::default();
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(span.span_context().clone()),
            &mut carried,
        );
        self.carried = Some(carried);
        self.write = Some(span);
    }

    /// Ends the sink write's span with what the sink answered.
    pub fn end_write(&mut self, result: &Result<Applied, SinkError>) {
        let Some(mut span) = self.write.take() else {
            return;
        };
        match result {
            Ok(applied) => span.set_attribute(KeyValue::new(
                attribute::WRITE_RESULT,
                match applied {
                    Applied::Written => "written",
                    Applied::Skipped => "skipped",
                },
            )),
            Err(error) => {
                span.set_attribute(KeyValue::new(
                    attribute::ERROR_CLASS,
                    match error.class() {
                        ErrorClass::Transient => "transient",
                        ErrorClass::Permanent => "permanent",
                    },
                ));
                span.set_status(Status::error(
                    text::cut(&error.to_string(), text::LOGGED_CHARS).into_owned(),
                ));
            }
        }
        span.end();
    }

    /// The trace context naming the sink write's span, once it started.
    pub fn carried(&self) -> Option<&Carried> {
        self.carried.as_ref()
    }

    /// Ends the event span with the outcome carried out (`settled`).
    pub fn finish(self, outcome: &Outcome, settled: Settled) {
        let span = self.event.span();
        span.set_attribute(KeyValue::new(attribute::OUTCOME, settled.as_str()));
        match outcome {
            Outcome::Applied | Outcome::Skipped => {}
            Outcome::Retry { after } => span.set_attribute(KeyValue::new(
                attribute::RETRY_AFTER_MS,
                i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            )),
            Outcome::DeadLetter { reason, error } => {
                span.set_attribute(KeyValue::new(
                    attribute::DEAD_LETTER_REASON,
                    DeadLetterReason::as_str(*reason),
                ));
                span.set_status(Status::error(
                    text::cut(error, text::LOGGED_CHARS).into_owned(),
                ));
            }
        }
        span.end();
    }
}

/// A sequence as a span value (OTLP integers are signed).
fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The source message's headers, read by the W3C propagator.
struct SourceHeaders<'a>(Option<&'a async_nats::HeaderMap>);

impl Extractor for SourceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|headers| headers.iter().map(|(name, _)| name.as_ref()).collect())
            .unwrap_or_default()
    }
}

/// The OTLP exporter, telling the log when exports start failing and when
/// they work again (once each, not per batch).
#[derive(Debug)]
struct Logged<E> {
    exporter: E,
    failing: AtomicBool,
}

impl<E> Logged<E> {
    fn new(exporter: E) -> Self {
        Self {
            exporter,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.exporter.export(batch).await;
        match &result {
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("Span export works again");
            }
            Ok(()) => {}
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %error, spans, "Span export failed; spans are dropped until it works again");
            }
            Err(_) => {}
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_trace_context_is_read_from_the_message_headers() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.insert(TRACESTATE, "vendor=x");
        let parent = TraceContextPropagator::new().extract(&SourceHeaders(Some(&headers)));
        let context = parent.span().span_context().clone();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(context.trace_state().header(), "vendor=x");

        let mut carried = Carried::default();
        TraceContextPropagator::new().inject_context(&parent, &mut carried);
        assert_eq!(
            carried.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(carried.tracestate, "vendor=x");

        for broken in [None, Some("00-zz-00f067aa0ba902b7-01"), Some("")] {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(value) = broken {
                headers.insert(TRACEPARENT, value);
            }
            let parent = TraceContextPropagator::new().extract(&SourceHeaders(Some(&headers)));
            assert!(!parent.span().span_context().is_valid(), "{broken:?}");
        }
    }
}
