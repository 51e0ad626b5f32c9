//! NATS KV read models: one JSON document per key, updated by
//! compare-and-set. `config` (the sink block), `document` (the operations on
//! a document, pure), `sink` (reads and writes the bucket).

pub mod config;
pub mod document;
pub mod sink;

pub use config::KvSinkConfig;
pub use sink::KvSink;
