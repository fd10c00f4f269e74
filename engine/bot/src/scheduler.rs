//! The bot's keyed work queue, shaped like kube-runtime's controller scheduler: work is a key
//! (a pull request's head SHA to plan, a merge commit to execute, a comment id to answer, …),
//! never a payload, so asking twice for the same key is one piece of work.
//!
//! - [`Scheduler::schedule`] dedupes: a key already waiting keeps the earlier of its two due
//!   times (a request to do it sooner wins, a later one is absorbed).
//! - [`Scheduler::pop_due`] hands out the due keys in key order (`Ord`), not in due-time order:
//!   the key type's order is the order work of one pass must run in (merges before the plans
//!   that read the policy they leave).
//! - A reconciler's answer is an [`Action`]: done until something enqueues the key again, or
//!   requeued after a delay.
//!
//! The scheduler does no I/O and reads no clock: callers pass `now` (a `tokio::time::Instant`,
//! so tests pause and advance time instead of sleeping).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// What a reconciler asks for after it ran (kube-runtime's `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing more to do until the key is enqueued again (by the next poll or a webhook).
    AwaitChange,
    /// Run the key again after this long (e.g. a soak that ends then, or a retry).
    Requeue(Duration),
}

impl Action {
    /// [`Action::Requeue`] after `after`.
    pub fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }
}

/// Keys waiting to be reconciled, each with the instant it is due.
#[derive(Debug)]
pub struct Scheduler<K> {
    due: BTreeMap<K, Instant>,
}

impl<K> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            due: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Scheduler<K> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for `key` to be reconciled at `at` (or at once if `at` has passed). A key already
    /// waiting keeps the earlier of its due time and `at`: enqueueing is idempotent.
    pub fn schedule(&mut self, key: K, at: Instant) {
        self.due
            .entry(key)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// Takes the smallest key (by `Ord`) whose due time is at or before `now`; `None` when no
    /// key is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let key = self
            .due
            .iter()
            .find(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())?;
        self.due.remove(&key);
        Some(key)
    }

    /// The earliest due time of a waiting key; `None` when the queue is empty.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// How many keys are waiting.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// Whether `key` is waiting.
    pub fn contains(&self, key: &K) -> bool {
        self.due.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_enqueued_twice_is_one_piece_of_work_due_at_the_earlier_time() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.schedule("pr/7", now + Duration::from_secs(30));
        s.schedule("pr/7", now + Duration::from_secs(5));
        s.schedule("pr/7", now + Duration::from_secs(60));
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(s.pop_due(now), None, "not due yet");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.pop_due(Instant::now()), Some("pr/7"));
        assert!(s.is_empty());
        assert_eq!(s.pop_due(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn due_keys_come_out_in_key_order_not_in_the_order_they_were_enqueued() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.schedule(3, now);
        s.schedule(1, now + Duration::from_secs(1));
        s.schedule(2, now);
        s.schedule(0, now + Duration::from_secs(10));
        assert_eq!(s.pop_due(now), Some(2));
        assert_eq!(s.pop_due(now), Some(3));
        assert_eq!(s.pop_due(now), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.pop_due(Instant::now()), Some(1));
        assert!(s.contains(&0));
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeued_key_waits_its_delay_unless_enqueued_sooner() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        let Action::Requeue(after) = Action::requeue(Duration::from_secs(30)) else {
            unreachable!()
        };
        s.schedule("merge/abc", now + after);
        assert_eq!(s.pop_due(now + Duration::from_secs(29)), None);
        // A poll enqueues it again now: it runs now.
        s.schedule("merge/abc", now);
        assert_eq!(s.pop_due(now), Some("merge/abc"));
    }
}
