//! PostgreSQL read models: one statement per event type, applied in batched
//! transactions together with per-aggregate checkpoints. `config` (the sink
//! block), `sql` (parameter types and error classes), `batch` (the batch
//! writer task), `sink` (the [`Sink`](crate::sink::Sink) the pipeline calls),
//! `tls` (libpq's `sslmode` and `sslrootcert` for the connection).

pub mod batch;
pub mod config;
pub mod sink;
pub mod sql;
pub mod tls;

pub use config::PostgresSinkConfig;
pub use sink::PostgresSink;
