//! End-to-end tests against a real nats-server (one per test, on an ephemeral
//! port with a temporary store). One test binary; shared harness in `support`.

mod support;

mod chaos;
mod check;
mod core;
mod delivery;
mod dlq;
mod hostile;
mod http;
mod kv;
mod manual;
mod observability;
mod packaging;
mod partitions;
mod postgres;
mod project;
mod projections;
mod publish;
mod rebuild;
mod replay;
mod replicas;
mod schema_diff;
mod security;
mod traces;
mod upcast;
