//! Scenario 1: the `jetline` process killed with SIGKILL at 10 random points
//! of the run (each when the slowest sink has settled a random share of the
//! stream, plus up to 300 ms) and started again at once. Nothing it held
//! unacked may be lost or applied twice, and order holds across the kills.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    accounting::Report,
    model::PoisonMix,
    world::{SINKS, World, wait_until},
};

const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_kill_at_random_points_loses_and_repeats_nothing() {
    let seed = std::env::var("JETLINE_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut world = World::with_stream("", PoisonMix::None).await;
    let last = world.model.last_seq();
    let mut points: Vec<u64> = (0..KILLS)
        .map(|_| rng.random_range(last / 20..=last * 9 / 10))
        .collect();
    points.sort_unstable();

    let yaml = world.yaml("", &[]);
    let started = Instant::now();
    world.start_jetline(&yaml);
    let mut recoveries = Vec::new();
    let mut stuck = None;
    for (kill, point) in points.iter().enumerate() {
        let reached = wait_until(Duration::from_secs(300), || async {
            world
                .slowest_floor(&SINKS)
                .await
                .is_some_and(|floor| floor >= *point)
        })
        .await;
        if !reached {
            stuck = Some(format!(
                "kill {}: the sinks never reached sequence {point}",
                kill + 1
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        world.kill_jetline();
        let restarted = Instant::now();
        world.start_jetline(&yaml);
        match world
            .recovered(&SINKS, restarted, Duration::from_secs(120))
            .await
        {
            Some(took) => recoveries.push(took),
            None => {
                stuck = Some(format!(
                    "kill {}: no sink progress within 120 s of the restart",
                    kill + 1
                ));
                break;
            }
        }
    }
    let settled = stuck.is_none() && world.until_settled(&SINKS).await;
    let elapsed = started.elapsed();
    world.stop_jetline();

    let mut report = Report::new("chaos_kill", &world);
    report.check(stuck.is_none(), stuck.unwrap_or_default());
    report.check(settled, "the sinks did not settle every message".into());
    report.note(format!(
        "{} SIGKILLs at sequences {points:?} (seed {seed}; JETLINE_CHAOS_SEED repeats it)",
        recoveries.len()
    ));
    report.note(recovery_line(&recoveries, elapsed));
    report.account(&world, Vec::new()).await;
    report.finish();
}

/// `time to recover: max, mean over N restarts; settled after T`.
fn recovery_line(recoveries: &[Duration], elapsed: Duration) -> String {
    let max = recoveries.iter().max().copied().unwrap_or_default();
    let mean = recoveries.iter().sum::<Duration>() / recoveries.len().max(1) as u32;
    format!(
        "time to recover (restart to every sink settling again): max {:.1} s, mean {:.1} s over {} restarts; all settled {:.1} s after the start",
        max.as_secs_f64(),
        mean.as_secs_f64(),
        recoveries.len(),
        elapsed.as_secs_f64()
    )
}
