//! Jetline's peak memory while it drains a backlog: a stream of `backlog`
//! events published before Jetline starts, drained at the defaults into a
//! JetStream sink; `VmHWM` of the process, read from /proc once the last
//! event is republished. Back-pressure (`max_ack_pending`) should keep it
//! flat whatever the backlog.

use std::time::Duration;

use crate::{
    Bench,
    jetline::{DLQ_STREAM, Jetline},
    preload,
    support::{create_stream, stream_count},
};

/// Peak resident memory in KiB while draining `backlog` events.
pub async fn measure(bench: &Bench, backlog: usize) -> u64 {
    let source = format!("rss_{backlog}");
    let output = format!("rss_{backlog}_out");
    create_stream(&bench.js, &source, &[&format!("{source}.>")]).await;
    create_stream(&bench.js, &output, &[&format!("{output}.>")]).await;
    preload::publish_generated(&bench.js, &source, "rss", backlog).await;

    let url = bench.server.url();
    let mut jetline = Jetline::start_copy(&url, &source, &output, &bench.upcasters);
    let timeout = Duration::from_secs(120).max(Duration::from_millis(backlog as u64));
    jetline
        .until(
            "the backlog drained",
            timeout,
            Duration::from_millis(50),
            || async { stream_count(&bench.js, &output).await >= backlog as u64 },
        )
        .await;
    let peak = jetline.peak_rss_kib();
    drop(jetline);
    assert_eq!(
        stream_count(&bench.js, DLQ_STREAM).await,
        0,
        "{source}: nothing dead-lettered"
    );
    let _ = bench.js.delete_stream(&source).await;
    let _ = bench.js.delete_stream(&output).await;
    peak
}
