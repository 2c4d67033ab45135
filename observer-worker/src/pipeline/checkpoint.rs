//! Which events of the open batch are finished, and how far the checkpoint
//! may move: to the end of the **contiguous prefix** of finished events, in
//! batch (id) order. An unfinished event holds the checkpoint back however
//! many later events are finished.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct CheckpointTracker {
    /// Registered, not yet passed events in id order, with their finished flag.
    pending: VecDeque<(i64, bool)>,
    /// Last id of the finished prefix (starts at the batch's saved `last_id`).
    position: i64,
    /// The highest position known to be durable.
    saved: i64,
    /// Events passed by `position` since the tracker was created.
    passed_total: u64,
    /// `passed_total` at the time of the last durable save.
    passed_at_save: u64,
    last_registered: i64,
}

impl CheckpointTracker {
    /// A tracker for a batch whose saved progress is `last_id`.
    pub fn new(last_id: i64) -> Self {
        CheckpointTracker {
            pending: VecDeque::new(),
            position: last_id,
            saved: last_id,
            passed_total: 0,
            passed_at_save: 0,
            last_registered: last_id,
        }
    }

    /// Registers a fetched event. Ids must increase; a non-increasing id is
    /// rejected (returns false) and never tracked.
    pub fn register(&mut self, id: i64) -> bool {
        if id <= self.last_registered {
            return false;
        }
        self.last_registered = id;
        self.pending.push_back((id, false));
        true
    }

    /// Marks an event finished and advances the prefix. Returns false for an
    /// id that is not pending (already passed or never registered).
    pub fn finish(&mut self, id: i64) -> bool {
        let Ok(i) = self.pending.binary_search_by_key(&id, |(id, _)| *id) else {
            return false;
        };
        self.pending[i].1 = true;
        while let Some(&(front, true)) = self.pending.front() {
            self.pending.pop_front();
            self.position = front;
            self.passed_total += 1;
        }
        true
    }

    /// The checkpoint value: every event up to here is finished.
    pub fn position(&self) -> i64 {
        self.position
    }

    pub fn saved(&self) -> i64 {
        self.saved
    }

    pub fn has_unsaved_progress(&self) -> bool {
        self.position > self.saved
    }

    /// Events passed since the last durable save.
    pub fn unsaved_events(&self) -> u64 {
        self.passed_total - self.passed_at_save
    }

    /// A token for [`mark_saved`](Self::mark_saved), taken when a save starts.
    pub fn save_point(&self) -> SavePoint {
        SavePoint {
            position: self.position,
            passed: self.passed_total,
        }
    }

    /// Records that `point` is durable.
    pub fn mark_saved(&mut self, point: SavePoint) {
        if point.position > self.saved {
            self.saved = point.position;
        }
        if point.passed > self.passed_at_save {
            self.passed_at_save = point.passed;
        }
    }

    /// True if every registered event is finished.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Registered events not yet passed (finished or not).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn last_registered(&self) -> i64 {
        self.last_registered
    }
}

/// What a checkpoint save is about to make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavePoint {
    pub position: i64,
    passed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_only_moves_over_contiguous_finished_events() {
        let mut t = CheckpointTracker::new(100);
        for id in [101, 105, 106, 110] {
            assert!(t.register(id));
        }
        assert_eq!(t.position(), 100);
        assert!(t.finish(105));
        assert!(t.finish(110));
        assert_eq!(
            t.position(),
            100,
            "101 is unfinished: nothing may be passed"
        );
        assert!(t.finish(101));
        assert_eq!(t.position(), 105, "101 and 105 done, 106 not");
        assert!(t.finish(106));
        assert_eq!(t.position(), 110);
        assert!(t.is_idle());
    }

    #[test]
    fn unknown_and_repeated_finishes_are_ignored() {
        let mut t = CheckpointTracker::new(0);
        t.register(1);
        t.register(2);
        assert!(!t.finish(3));
        assert!(t.finish(1));
        assert!(!t.finish(1), "already passed");
        assert_eq!(t.position(), 1);
        assert!(!t.is_idle());
    }

    #[test]
    fn ids_must_increase() {
        let mut t = CheckpointTracker::new(10);
        assert!(!t.register(10), "not above the saved position");
        assert!(t.register(12));
        assert!(!t.register(11));
        assert!(!t.register(12));
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn save_bookkeeping() {
        let mut t = CheckpointTracker::new(0);
        for id in 1..=5 {
            t.register(id);
        }
        t.finish(1);
        t.finish(2);
        assert!(t.has_unsaved_progress());
        assert_eq!(t.unsaved_events(), 2);
        let point = t.save_point();
        // more progress while the save is in flight
        t.finish(3);
        t.mark_saved(point);
        assert_eq!(t.saved(), 2);
        assert!(t.has_unsaved_progress());
        assert_eq!(t.unsaved_events(), 1);
        // a late, older save never moves `saved` backwards
        t.mark_saved(SavePoint {
            position: 1,
            passed: 1,
        });
        assert_eq!(t.saved(), 2);
    }

    #[test]
    fn random_completion_order_always_yields_the_prefix() {
        // deterministic shuffle
        let ids: Vec<i64> = (1..=200).map(|i| i * 3).collect();
        let mut order = ids.clone();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let mut t = CheckpointTracker::new(0);
        for id in &ids {
            t.register(*id);
        }
        let mut done = std::collections::BTreeSet::new();
        for id in order {
            t.finish(id);
            done.insert(id);
            let expected = ids
                .iter()
                .take_while(|i| done.contains(i))
                .last()
                .copied()
                .unwrap_or(0);
            assert_eq!(t.position(), expected);
        }
        assert!(t.is_idle());
    }
}
