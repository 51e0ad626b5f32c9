//! HTTP webhooks: each event POSTed as JSON with an idempotency key.
//! `config` (the sink block), `sink` (the request and how its answer is read).

pub mod config;
pub mod sink;

pub use config::HttpSinkConfig;
pub use sink::HttpSink;
