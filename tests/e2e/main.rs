//! End-to-end tests against a real nats-server (one per test, on an ephemeral
//! port with a temporary store). One test binary; shared harness in `support`.

mod support;

mod bench;
mod check;
mod core;
mod http;
mod kv;
mod postgres;
mod projections;
