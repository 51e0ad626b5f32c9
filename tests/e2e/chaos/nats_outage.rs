//! Scenario 2: nats-server stopped for 10 s mid-stream and started again
//! with its store: Jetline reconnects by itself and resumes, and `/readyz`
//! answers 503 while the server is away.

use std::time::{Duration, Instant};

use super::{
    accounting::{Report, seconds},
    model::PoisonMix,
    world::World,
};

const OUTAGE: Duration = Duration::from_secs(10);
/// Time Jetline may take to notice the lost connection.
const NOTICE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_nats_outage_reconnects_and_resumes() {
    let mut world = World::with_stream("", PoisonMix::None).await;
    let started = Instant::now();
    world.start_jetline(&world.yaml("", &[]));
    let progressed = world.until_progress(0.3).await;

    world.nats.stop_gracefully();
    let stopped = Instant::now();
    let (mut unready, mut ready) = (0, 0);
    while stopped.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if stopped.elapsed() < NOTICE {
            continue;
        }
        match world.readyz().await {
            Some((503, _)) => unready += 1,
            _ => ready += 1,
        }
    }
    world.nats.start_again();
    let restarted = Instant::now();
    let ready_again = world
        .until_ready(Duration::from_secs(60))
        .await
        .then(|| restarted.elapsed());
    let recovery = world.recover(started, restarted).await;
    world.stop_jetline();

    let mut report = Report::new("chaos_nats_outage", &world);
    report.check(
        progressed,
        "the sinks never reached 30% before the outage".into(),
    );
    report.check(
        unready > 0 && ready == 0,
        format!("/readyz during the outage: {unready} polls answered 503, {ready} did not"),
    );
    report.check(
        ready_again.is_some(),
        "/readyz not 200 within 60 s of the restart".into(),
    );
    report.note(format!(
        "nats-server down {:.0} s; /readyz 503 in {unready} of {} polls during it, 200 again {} after the restart",
        OUTAGE.as_secs_f64(),
        unready + ready,
        seconds(ready_again)
    ));
    report.recovery("the server's restart", &recovery);
    report.account(&world, Vec::new()).await;
    report.finish();
}
