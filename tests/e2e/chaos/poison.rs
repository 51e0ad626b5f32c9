//! Scenario 5: 1% poison (garbage bytes, truncated protobuf, a payload of
//! the wrong schema, an unknown event type, a 10 MB event, JSON nested
//! 100,000 deep) among the good events: each dead-lettered once per sink
//! with its reason, every good event applied.

use std::time::Instant;

use super::{
    accounting::Report,
    model::PoisonMix,
    world::{SINKS, World},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_poison_is_dead_lettered_once_per_sink_while_good_events_flow() {
    // The 10 MB event must reach the stream (and its dead letters the
    // dead-letter stream): above the server's default 1 MB limit.
    let mut world = World::with_stream("max_payload: 16MB\n", PoisonMix::Every).await;
    world.start_jetline(&world.yaml("", &[]));
    let started = Instant::now();
    let settled = world.until_settled(&SINKS).await;
    let elapsed = started.elapsed();
    world.stop_jetline();

    let mut report = Report::new("chaos_poison", &world);
    report.check(settled, "the sinks did not settle every message".into());
    report.note(format!("settled in {:.1} s", elapsed.as_secs_f64()));
    report.account(&world, Vec::new()).await;
    report.finish();
}
