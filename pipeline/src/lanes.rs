//! Per-aggregate order: an aggregate's events start one at a time, in stream
//! order, also while one of them waits for its retry; other aggregates flow
//! in parallel, at most `concurrency` events at once.
//!
//! Pure bookkeeping, no IO: the pipeline admits deliveries, starts what
//! [`Lanes::next_ready`] hands out, and reports each [`Completion`].
//! **Invariant:** at most one event per key is in flight, and a key's events
//! start in the order their stream sequences were admitted, except that a
//! redelivery of the event the key waits for goes first.
//! Memory is bounded by what the server delivers (`max_ack_pending`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

/// How a finished event leaves its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Acked, or dead-lettered and terminated: the key moves on.
    Done,
    /// Dead-lettered after its retries, with `on_dead_letter: park_key`: the
    /// key's later events are dead-lettered too.
    DoneAndPark,
    /// Nak'd for a later redelivery: the key waits for that sequence.
    Retrying,
}

/// What to do with an event that [`Lanes::next_ready`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    Apply,
    /// Its key is parked: dead-letter it as `parked_after_failure`.
    Park,
}

#[derive(Debug)]
struct KeyState<T> {
    queue: VecDeque<(u64, T)>,
    in_flight: Option<u64>,
    /// The sequence nak'd for redelivery, which must go before the queue.
    awaiting: Option<u64>,
    parked: bool,
    /// Whether the key stands in `Lanes::ready` (kept here: scanning that
    /// queue on every admit costs as much as the keys waiting).
    listed: bool,
}

impl<T> KeyState<T> {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            in_flight: None,
            awaiting: None,
            parked: false,
            listed: false,
        }
    }

    /// Whether the head of the queue may start now.
    fn can_start(&self) -> bool {
        self.in_flight.is_none()
            && self
                .queue
                .front()
                .is_some_and(|(seq, _)| self.awaiting.is_none_or(|awaited| awaited == *seq))
    }
}

/// The scheduler of one consumer.
#[derive(Debug)]
pub struct Lanes<T> {
    concurrency: usize,
    in_flight: usize,
    /// Keys are shared with `ready` and handed out with their events: one
    /// allocation per key, however often it becomes ready.
    keys: HashMap<Arc<str>, KeyState<T>>,
    /// Keys whose head may start, in the order they became ready.
    ready: VecDeque<Arc<str>>,
    /// Events without a key (ordering `none`, or undecodable).
    unkeyed: VecDeque<T>,
}

impl<T> Lanes<T> {
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            in_flight: 0,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            unkeyed: VecDeque::new(),
        }
    }

    /// Admits a delivery. A second delivery of a sequence already queued
    /// replaces it; one of a sequence in flight is returned, to be dropped
    /// unacked (the running one will settle it).
    pub fn admit<K>(&mut self, key: Option<K>, seq: u64, item: T) -> Option<T>
    where
        K: AsRef<str> + Into<Arc<str>>,
    {
        let Some(key) = key else {
            self.unkeyed.push_back(item);
            return None;
        };
        // The key is taken only when it is new: most events find theirs.
        let key: Arc<str> = match self.keys.get_key_value(key.as_ref()) {
            Some((shared, _)) => Arc::clone(shared),
            None => {
                let key: Arc<str> = key.into();
                self.keys.insert(Arc::clone(&key), KeyState::new());
                key
            }
        };
        let state = self.keys.get_mut(&*key).expect("the key is in the map");
        if state.in_flight == Some(seq) {
            return Some(item);
        }
        if let Some(slot) = state.queue.iter_mut().find(|(queued, _)| *queued == seq) {
            slot.1 = item;
            return None;
        }
        if state.awaiting == Some(seq) {
            state.queue.push_front((seq, item));
        } else {
            // Keep stream order even if a redelivery overtakes a first delivery.
            let position = state.queue.partition_point(|(queued, _)| *queued < seq);
            state.queue.insert(position, (seq, item));
        }
        if state.can_start() && !state.listed {
            state.listed = true;
            self.ready.push_back(key);
        }
        None
    }

    /// The next event to start, if a slot is free and one is ready.
    pub fn next_ready(&mut self) -> Option<(Option<Arc<str>>, u64, T, Dispatch)> {
        if self.in_flight >= self.concurrency {
            return None;
        }
        if let Some(item) = self.unkeyed.pop_front() {
            self.in_flight += 1;
            return Some((None, 0, item, Dispatch::Apply));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(state) = self.keys.get_mut(&*key) else {
                continue;
            };
            state.listed = false;
            if !state.can_start() {
                continue;
            }
            let Some((seq, item)) = state.queue.pop_front() else {
                continue;
            };
            state.in_flight = Some(seq);
            state.awaiting = None;
            self.in_flight += 1;
            let dispatch = if state.parked {
                Dispatch::Park
            } else {
                Dispatch::Apply
            };
            return Some((Some(key), seq, item, dispatch));
        }
        None
    }

    /// Reports that the event `seq` of `key` (as handed out) has finished.
    pub fn complete<K>(&mut self, key: Option<K>, seq: u64, completion: Completion)
    where
        K: AsRef<str> + Into<Arc<str>>,
    {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(key) = key else {
            return;
        };
        let Some(state) = self.keys.get_mut(key.as_ref()) else {
            return;
        };
        if state.in_flight == Some(seq) {
            state.in_flight = None;
        }
        match completion {
            Completion::Done => {}
            Completion::DoneAndPark => state.parked = true,
            Completion::Retrying => state.awaiting = Some(seq),
        }
        if state.queue.is_empty() && state.in_flight.is_none() && state.awaiting.is_none() {
            if !state.parked {
                self.keys.remove(key.as_ref());
            }
        } else if state.can_start() && !state.listed {
            state.listed = true;
            // The key handed out with the event: no copy, no second lookup.
            self.ready.push_back(key.into());
        }
    }

    /// Events admitted but not started (they need progress acks while waiting).
    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.keys
            .values()
            .flat_map(|state| state.queue.iter().map(|(_, item)| item))
            .chain(self.unkeyed.iter())
    }

    /// Takes every event admitted but not started, in no particular order
    /// (to be handed back); events in flight still report their completion.
    pub fn drain_waiting(&mut self) -> Vec<T> {
        let mut drained: Vec<T> = self.unkeyed.drain(..).collect();
        self.ready.clear();
        self.keys.retain(|_, state| {
            drained.extend(state.queue.drain(..).map(|(_, item)| item));
            state.awaiting = None;
            state.listed = false;
            state.in_flight.is_some()
        });
        drained
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Parks `key` as a dead-lettered event with `park_key` would (the set
    /// kept from an earlier run).
    pub fn park(&mut self, key: &str) {
        self.keys
            .entry(Arc::from(key))
            .or_insert_with(KeyState::new)
            .parked = true;
    }

    /// Lets `key`'s later events be applied again; true if it was parked.
    pub fn unpark(&mut self, key: &str) -> bool {
        let Some(state) = self.keys.get_mut(key) else {
            return false;
        };
        let was_parked = std::mem::replace(&mut state.parked, false);
        if state.queue.is_empty() && state.in_flight.is_none() && state.awaiting.is_none() {
            self.keys.remove(key);
        }
        was_parked
    }

    pub fn is_parked(&self, key: &str) -> bool {
        self.keys.get(key).is_some_and(|state| state.parked)
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
            && self.unkeyed.is_empty()
            && self.keys.values().all(|s| s.queue.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(lanes: &mut Lanes<u64>) -> Vec<(Option<String>, u64)> {
        std::iter::from_fn(|| {
            lanes
                .next_ready()
                .map(|(key, _, item, _)| (key.map(|key| key.to_string()), item))
        })
        .collect()
    }

    #[test]
    fn a_key_parked_from_before_dead_letters_until_unparked() {
        let mut lanes = Lanes::new(8);
        lanes.park("a");
        assert!(lanes.is_parked("a"));
        lanes.admit(Some("a"), 1, 1);
        let next = lanes
            .next_ready()
            .map(|(_, seq, _, dispatch)| (seq, dispatch));
        assert_eq!(next, Some((1, Dispatch::Park)));
        lanes.complete(Some("a"), 1, Completion::Done);
        assert!(lanes.is_parked("a"), "a parked key stays parked when idle");
        assert!(lanes.unpark("a"));
        assert!(!lanes.unpark("a"));
        lanes.admit(Some("a"), 2, 2);
        let next = lanes
            .next_ready()
            .map(|(_, seq, _, dispatch)| (seq, dispatch));
        assert_eq!(next, Some((2, Dispatch::Apply)));
    }

    #[test]
    fn one_event_per_key_in_flight_other_keys_flow() {
        let mut lanes = Lanes::new(8);
        lanes.admit(Some("a"), 1, 1);
        lanes.admit(Some("a"), 2, 2);
        lanes.admit(Some("b"), 3, 3);
        let started = drain(&mut lanes);
        assert_eq!(started, [(Some("a".into()), 1), (Some("b".into()), 3)]);
        lanes.complete(Some("a"), 1, Completion::Done);
        assert_eq!(drain(&mut lanes), [(Some("a".into()), 2)]);
    }

    #[test]
    fn a_retrying_key_waits_for_its_redelivery() {
        let mut lanes = Lanes::new(8);
        lanes.admit(Some("a"), 1, 1);
        assert_eq!(drain(&mut lanes).len(), 1);
        lanes.admit(Some("a"), 2, 2);
        lanes.admit(Some("b"), 5, 5);
        lanes.complete(Some("a"), 1, Completion::Retrying);
        // `a`'s later event waits; `b` flows.
        assert_eq!(drain(&mut lanes), [(Some("b".into()), 5)]);
        lanes.admit(Some("a"), 1, 10); // the redelivery
        assert_eq!(drain(&mut lanes), [(Some("a".into()), 10)]);
        lanes.complete(Some("a"), 1, Completion::Done);
        assert_eq!(drain(&mut lanes), [(Some("a".into()), 2)]);
    }

    #[test]
    fn concurrency_bounds_in_flight_and_parking_marks_later_events() {
        let mut lanes = Lanes::new(2);
        for seq in 1..=4 {
            lanes.admit(Some(format!("k{seq}")), seq, seq);
        }
        assert_eq!(drain(&mut lanes).len(), 2);
        lanes.complete(Some("k1"), 1, Completion::DoneAndPark);
        lanes.admit(Some("k1"), 9, 9);
        let next: Vec<_> =
            std::iter::from_fn(|| lanes.next_ready().map(|(_, _, i, d)| (i, d))).collect();
        assert_eq!(next, [(3, Dispatch::Apply)]);
        lanes.complete(Some("k2"), 2, Completion::Done);
        let next: Vec<_> =
            std::iter::from_fn(|| lanes.next_ready().map(|(_, _, i, d)| (i, d))).collect();
        assert_eq!(next, [(4, Dispatch::Apply)]);
        lanes.complete(Some("k3"), 3, Completion::Done);
        let next: Vec<_> =
            std::iter::from_fn(|| lanes.next_ready().map(|(_, _, i, d)| (i, d))).collect();
        assert_eq!(next, [(9, Dispatch::Park)]);
    }

    #[test]
    fn drained_events_leave_only_what_is_in_flight() {
        let mut lanes = Lanes::new(8);
        lanes.admit(Some("a"), 1, 1);
        lanes.admit(Some("a"), 2, 2);
        lanes.admit(Some("b"), 3, 3);
        lanes.admit(None::<&str>, 0, 4);
        assert_eq!(lanes.next_ready().map(|(_, _, item, _)| item), Some(4));
        assert_eq!(lanes.next_ready().map(|(_, _, item, _)| item), Some(1));
        let mut drained = lanes.drain_waiting();
        drained.sort();
        assert_eq!(drained, [2, 3]);
        assert!(lanes.next_ready().is_none());
        lanes.complete(Some("a"), 1, Completion::Done);
        lanes.complete(None::<&str>, 0, Completion::Done);
        assert!(lanes.is_idle());
        // A later admission starts as on a fresh scheduler.
        lanes.admit(Some("a"), 5, 5);
        assert_eq!(drain(&mut lanes), [(Some("a".into()), 5)]);
    }

    #[test]
    fn duplicates_replace_queued_and_are_returned_when_in_flight() {
        let mut lanes = Lanes::new(1);
        lanes.admit(Some("a"), 1, 1);
        assert_eq!(drain(&mut lanes).len(), 1);
        assert_eq!(lanes.admit(Some("a"), 1, 100), Some(100));
        lanes.admit(Some("a"), 2, 2);
        lanes.admit(Some("a"), 2, 20);
        lanes.complete(Some("a"), 1, Completion::Done);
        assert_eq!(drain(&mut lanes), [(Some("a".into()), 20)]);
        assert_eq!(lanes.waiting().count(), 0);
    }
}
