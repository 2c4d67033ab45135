//! Runs events concurrently while keeping per-key order.
//!
//! * Events without an ordering key start immediately.
//! * Events with a key run one at a time per key, in submission (= batch)
//!   order: the next one starts when the previous one is *finished*, i.e.
//!   after all its retries and dead letters.
//! * The dispatcher holds every submitted event until it completes; the
//!   consumer claims no more events than `max_in_flight - held()`, so memory
//!   and work are bounded even when one hot key queues everything.
//!
//! Pure in-process logic: the work itself is an [`EventHandler`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::task::{Id, JoinSet};

use crate::actions::BoxFuture;
use crate::db::FetchedEvent;

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Every action succeeded or was durably dead-lettered.
    Finished,
    /// Given up for now (shutdown, lost lease): it must be delivered again later.
    Unfinished,
}

/// Does the work for one event.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, event: FetchedEvent) -> BoxFuture<'static, EventOutcome>;
}

/// A completed event, as reported to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub event_id: i64,
    pub kind: CompletionKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionKind {
    Finished,
    /// Not finished: the handler gave up, it was never started (shutdown), or
    /// an earlier event of its key did not finish.
    Unfinished,
    /// The handler panicked (a bug); the event is not finished.
    Panicked(String),
}

type TaskResult = (i64, Option<String>, EventOutcome);

pub struct Dispatcher<H: EventHandler> {
    handler: Arc<H>,
    running: JoinSet<TaskResult>,
    /// Task id -> (event id, key), to attribute panics.
    tasks: HashMap<Id, (i64, Option<String>)>,
    /// A key is present while an event of that key runs; the queue holds the
    /// events waiting behind it.
    keyed: HashMap<String, VecDeque<FetchedEvent>>,
    /// Completions produced without a task (events dropped from key queues).
    ready: VecDeque<Completion>,
    held: usize,
    starting_stopped: bool,
}

impl<H: EventHandler> Dispatcher<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Dispatcher {
            handler,
            running: JoinSet::new(),
            tasks: HashMap::new(),
            keyed: HashMap::new(),
            ready: VecDeque::new(),
            held: 0,
            starting_stopped: false,
        }
    }

    /// Events submitted and not yet reported by [`next_completion`](Self::next_completion).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Events currently executing.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn submit(&mut self, event: FetchedEvent) {
        self.held += 1;
        if self.starting_stopped {
            self.ready.push_back(Completion {
                event_id: event.id,
                kind: CompletionKind::Unfinished,
            });
            return;
        }
        match &event.ordering_key {
            Some(key) => match self.keyed.get_mut(key) {
                Some(queue) => queue.push_back(event),
                None => {
                    self.keyed.insert(key.clone(), VecDeque::new());
                    self.spawn(event);
                }
            },
            None => self.spawn(event),
        }
    }

    fn spawn(&mut self, event: FetchedEvent) {
        let id = event.id;
        let key = event.ordering_key.clone();
        let handler = self.handler.clone();
        let task_key = key.clone();
        let handle = self.running.spawn(async move {
            let outcome = handler.handle(event).await;
            (id, task_key, outcome)
        });
        self.tasks.insert(handle.id(), (id, key));
    }

    /// Waits for the next completed event; `None` when nothing is held.
    /// Cancel-safe (usable in `select!`).
    pub async fn next_completion(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                self.held -= 1;
                return Some(c);
            }
            let joined = self.running.join_next_with_id().await?;
            if let Some(c) = self.complete(joined) {
                return Some(c);
            }
        }
    }

    /// The next completion if one is ready now.
    pub fn try_next_completion(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                self.held -= 1;
                return Some(c);
            }
            let joined = self.running.try_join_next_with_id()?;
            if let Some(c) = self.complete(joined) {
                return Some(c);
            }
        }
    }

    fn complete(
        &mut self,
        joined: Result<(Id, TaskResult), tokio::task::JoinError>,
    ) -> Option<Completion> {
        let (event_id, key, kind) = match joined {
            Ok((task, (event_id, key, outcome))) => {
                self.tasks.remove(&task);
                let kind = match outcome {
                    EventOutcome::Finished => CompletionKind::Finished,
                    EventOutcome::Unfinished => CompletionKind::Unfinished,
                };
                (event_id, key, kind)
            }
            Err(e) => {
                let (event_id, key) = self.tasks.remove(&e.id())?;
                let kind = if e.is_panic() {
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    CompletionKind::Panicked(msg)
                } else {
                    CompletionKind::Unfinished
                };
                (event_id, key, kind)
            }
        };
        if let Some(key) = key {
            self.after_keyed(&key, kind == CompletionKind::Finished);
        }
        self.held -= 1;
        Some(Completion { event_id, kind })
    }

    /// Starts the next event of `key`, or, if this one did not finish (or we
    /// are stopping), reports everything queued behind it as unfinished: a
    /// later event of a key must never overtake an earlier one.
    fn after_keyed(&mut self, key: &str, finished: bool) {
        if finished && !self.starting_stopped {
            let next = self.keyed.get_mut(key).and_then(|q| q.pop_front());
            match next {
                Some(event) => self.spawn(event),
                None => {
                    self.keyed.remove(key);
                }
            }
        } else if let Some(queue) = self.keyed.remove(key) {
            for e in queue {
                self.ready.push_back(Completion {
                    event_id: e.id,
                    kind: CompletionKind::Unfinished,
                });
            }
        }
    }

    /// Shutdown: start nothing new. Events queued behind a running event of
    /// their key are reported unfinished; running events may complete.
    pub fn stop_starting(&mut self) {
        self.starting_stopped = true;
        for queue in self.keyed.values_mut() {
            for e in queue.drain(..) {
                self.ready.push_back(Completion {
                    event_id: e.id,
                    kind: CompletionKind::Unfinished,
                });
            }
        }
    }

    /// Drops everything held (lost lease, shutdown timeout): running tasks are
    /// aborted, nothing is reported. Returns how many events were dropped.
    pub fn abort_all(&mut self) -> usize {
        let dropped = self.held;
        self.running.abort_all();
        self.running.detach_all();
        self.running = JoinSet::new();
        self.tasks.clear();
        self.keyed.clear();
        self.ready.clear();
        self.held = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records start/end of each event; sleeps a per-event time.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<(char, i64)>>,
        running_now: Mutex<usize>,
        max_running: Mutex<usize>,
        fail: Vec<i64>,
        panic_on: Vec<i64>,
    }

    impl EventHandler for Recorder {
        fn handle(self: Arc<Self>, event: FetchedEvent) -> BoxFuture<'static, EventOutcome> {
            Box::pin(async move {
                {
                    self.log.lock().unwrap().push(('s', event.id));
                    let mut n = self.running_now.lock().unwrap();
                    *n += 1;
                    let mut m = self.max_running.lock().unwrap();
                    *m = (*m).max(*n);
                }
                if self.panic_on.contains(&event.id) {
                    panic!("boom {}", event.id);
                }
                // later ids finish sooner, to tempt reordering
                let ms = 30u64.saturating_sub((event.id as u64 % 10) * 3);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                *self.running_now.lock().unwrap() -= 1;
                self.log.lock().unwrap().push(('e', event.id));
                if self.fail.contains(&event.id) {
                    EventOutcome::Unfinished
                } else {
                    EventOutcome::Finished
                }
            })
        }
    }

    fn ev(id: i64, key: Option<&str>) -> FetchedEvent {
        FetchedEvent {
            id,
            observer_id: 1,
            ordering_key: key.map(str::to_owned),
            body: Bytes::from_static(b"{}"),
            day: "2026-11-29".to_owned(),
            captured_at: 0.0,
        }
    }

    async fn drain<H: EventHandler>(d: &mut Dispatcher<H>) -> Vec<Completion> {
        let mut out = Vec::new();
        while let Some(c) = d.next_completion().await {
            out.push(c);
        }
        out
    }

    #[tokio::test]
    async fn same_key_runs_in_order_one_at_a_time_other_keys_in_parallel() {
        let rec = Arc::new(Recorder::default());
        let mut d = Dispatcher::new(rec.clone());
        // keys a and b interleaved, plus unkeyed events
        let plan = [
            (1, Some("a")),
            (2, Some("b")),
            (3, Some("a")),
            (4, None),
            (5, Some("a")),
            (6, Some("b")),
            (7, None),
        ];
        for (id, key) in plan {
            d.submit(ev(id, key));
        }
        assert_eq!(d.held(), 7);
        let done = drain(&mut d).await;
        assert_eq!(done.len(), 7);
        assert!(done.iter().all(|c| c.kind == CompletionKind::Finished));
        assert_eq!(d.held(), 0);

        let log = rec.log.lock().unwrap().clone();
        let pos = |k: char, id: i64| log.iter().position(|e| *e == (k, id)).unwrap();
        // key a: 1 then 3 then 5, never overlapping
        assert!(pos('e', 1) < pos('s', 3));
        assert!(pos('e', 3) < pos('s', 5));
        // key b: 2 then 6
        assert!(pos('e', 2) < pos('s', 6));
        // keys run in parallel: b's first event started before a's first finished
        assert!(pos('s', 2) < pos('e', 1));
        // unkeyed events don't wait for keyed ones
        assert!(pos('s', 7) < pos('e', 1));
        assert!(*rec.max_running.lock().unwrap() >= 4);
    }

    #[tokio::test]
    async fn an_unfinished_event_blocks_its_key_but_not_others() {
        let rec = Arc::new(Recorder {
            fail: vec![1],
            ..Default::default()
        });
        let mut d = Dispatcher::new(rec.clone());
        for (id, key) in [
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("a")),
        ] {
            d.submit(ev(id, key));
        }
        let done = drain(&mut d).await;
        let kind = |id| done.iter().find(|c| c.event_id == id).unwrap().kind.clone();
        assert_eq!(kind(1), CompletionKind::Unfinished);
        assert_eq!(
            kind(2),
            CompletionKind::Unfinished,
            "must not overtake unfinished event 1"
        );
        assert_eq!(kind(4), CompletionKind::Unfinished);
        assert_eq!(kind(3), CompletionKind::Finished);
        let log = rec.log.lock().unwrap().clone();
        assert!(
            !log.contains(&('s', 2)) && !log.contains(&('s', 4)),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn stop_starting_reports_queued_events_unfinished() {
        let rec = Arc::new(Recorder::default());
        let mut d = Dispatcher::new(rec.clone());
        for (id, key) in [(1, Some("a")), (2, Some("a")), (3, Some("a")), (4, None)] {
            d.submit(ev(id, key));
        }
        d.stop_starting();
        d.submit(ev(5, None));
        let done = drain(&mut d).await;
        assert_eq!(done.len(), 5);
        let finished: Vec<i64> = done
            .iter()
            .filter(|c| c.kind == CompletionKind::Finished)
            .map(|c| c.event_id)
            .collect();
        let mut finished_sorted = finished.clone();
        finished_sorted.sort();
        assert_eq!(
            finished_sorted,
            vec![1, 4],
            "only the already running events finish"
        );
        assert_eq!(d.held(), 0);
    }

    #[tokio::test]
    async fn panics_are_reported_not_lost() {
        let rec = Arc::new(Recorder {
            panic_on: vec![2],
            ..Default::default()
        });
        let mut d = Dispatcher::new(rec);
        d.submit(ev(1, None));
        d.submit(ev(2, Some("k")));
        d.submit(ev(3, Some("k")));
        let done = drain(&mut d).await;
        let kind = |id| done.iter().find(|c| c.event_id == id).unwrap().kind.clone();
        assert!(matches!(kind(2), CompletionKind::Panicked(m) if m.contains("boom 2")));
        assert_eq!(kind(3), CompletionKind::Unfinished);
        assert_eq!(kind(1), CompletionKind::Finished);
    }

    #[tokio::test]
    async fn abort_all_drops_everything() {
        let rec = Arc::new(Recorder::default());
        let mut d = Dispatcher::new(rec.clone());
        for id in 1..=10 {
            d.submit(ev(id, Some("k")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(d.abort_all(), 10);
        assert_eq!(d.held(), 0);
        assert!(d.next_completion().await.is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let log = rec.log.lock().unwrap().clone();
        assert!(
            !log.contains(&('e', 1)),
            "aborted task must not complete: {log:?}"
        );
    }

    #[tokio::test]
    async fn hot_key_many_events_strict_order() {
        let rec = Arc::new(Recorder::default());
        let mut d = Dispatcher::new(rec.clone());
        for id in 1..=40 {
            d.submit(ev(id, Some(if id % 2 == 0 { "even" } else { "odd" })));
        }
        let done = drain(&mut d).await;
        assert_eq!(done.len(), 40);
        let log = rec.log.lock().unwrap().clone();
        let starts: Vec<i64> = log.iter().filter(|e| e.0 == 's').map(|e| e.1).collect();
        let evens: Vec<i64> = starts.iter().copied().filter(|i| i % 2 == 0).collect();
        let odds: Vec<i64> = starts.iter().copied().filter(|i| i % 2 == 1).collect();
        assert!(evens.windows(2).all(|w| w[0] < w[1]), "{evens:?}");
        assert!(odds.windows(2).all(|w| w[0] < w[1]), "{odds:?}");
        assert!(*rec.max_running.lock().unwrap() <= 2);
    }
}
