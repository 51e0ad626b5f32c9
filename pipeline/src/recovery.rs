//! Restart after a crash: the messages the previous process held unacked
//! ("leftovers") come back only when their ack timers run out, one by one in
//! timer order, while newer messages are delivered at once. Applied as they
//! come, an aggregate's newer events would overtake its leftovers, and the
//! read-model sinks, which skip what is not newer than what they applied,
//! would then drop the leftovers.
//!
//! **Invariant:** after a restart with leftovers, no event starts until every
//! leftover has been admitted to the lanes (which order each aggregate's
//! events by stream sequence), or until every leftover's ack timer must have
//! run out. Pure bookkeeping, no IO.

use std::{collections::HashSet, time::Duration};

use tokio::time::Instant;

/// What the consumer reported at bind: unacked messages and how far the
/// previous process had been delivered.
#[derive(Debug)]
pub struct Recovery {
    /// Messages delivered before the restart and not acked.
    leftovers: usize,
    /// Leftovers lie above the ack floor, up to the last delivered sequence.
    ack_floor: u64,
    last_delivered: u64,
    seen: HashSet<u64>,
    /// By then every leftover's ack timer has run out.
    deadline: Instant,
}

impl Recovery {
    /// `None` when the previous process left nothing unacked. Otherwise
    /// holds for at most `ack_wait` (plus delivery time) from now.
    pub fn after_restart(
        info: &async_nats::jetstream::consumer::Info,
        ack_wait: Duration,
        now: Instant,
    ) -> Option<Self> {
        (info.num_ack_pending > 0).then(|| Self {
            leftovers: info.num_ack_pending,
            ack_floor: info.ack_floor.stream_sequence,
            last_delivered: info.delivered.stream_sequence,
            seen: HashSet::new(),
            deadline: now + ack_wait + ack_wait / 10 + Duration::from_secs(1),
        })
    }

    /// Notes a delivery: a leftover when it lies in the leftover range.
    pub fn delivered(&mut self, stream_seq: u64) {
        if stream_seq > self.ack_floor && stream_seq <= self.last_delivered {
            self.seen.insert(stream_seq);
        }
    }

    /// Whether events must still wait.
    pub fn holding(&self, now: Instant) -> bool {
        self.seen.len() < self.leftovers && now < self.deadline
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn leftovers(&self) -> usize {
        self.leftovers
    }

    /// Leftovers delivered again so far.
    pub fn back(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(leftovers: usize, ack_floor: u64, last_delivered: u64) -> Recovery {
        Recovery {
            leftovers,
            ack_floor,
            last_delivered,
            seen: HashSet::new(),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    #[test]
    fn holds_until_every_leftover_is_back() {
        let now = Instant::now();
        let mut recovery = recovery(3, 10, 20);
        recovery.delivered(25); // newer than the leftovers
        recovery.delivered(10); // at the ack floor: acked before
        recovery.delivered(12);
        recovery.delivered(12); // the same leftover twice
        recovery.delivered(20);
        assert!(recovery.holding(now));
        recovery.delivered(11);
        assert!(!recovery.holding(now));
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let recovery = recovery(2, 0, 5);
        assert!(recovery.holding(recovery.deadline() - Duration::from_millis(1)));
        assert!(!recovery.holding(recovery.deadline()));
    }
}
