//! The fault suite, run by `scripts/chaos` (`#[ignore]`d: long): each
//! scenario publishes `JETLINE_CHAOS_EVENTS` events (default 200,000) over
//! up to 2,000 aggregates to one source read by all four sink kinds at once
//! (`world`), injects its fault against the real servers, waits until every
//! consumer settled, and accounts exactly (`accounting`): each message
//! applied once by each sink or dead-lettered once with its expected reason,
//! per-aggregate order in every sink. The expectation comes from what the
//! test published (`model`), never from Jetline. Each prints its table.

mod accounting;
mod model;
mod receiver;
mod world;

mod dead_letter_outage;
mod downstream_outage;
mod kill;
mod nats_outage;
mod panicking_sink;
mod poison;
mod slow_aggregate;
