//! One source call for concurrent misses of the same key (in this process).
//!
//! The first caller spawns the call as a task (so it finishes, and fills the
//! cache, even if every waiter gives up); later callers for the same key
//! await the same result. The entry is removed when the call finishes, so the
//! map holds at most one entry per call in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{FutureExt, Shared};

use super::{LookupError, LookupResult};
use crate::actions::BoxFuture;

type SharedResult = Shared<BoxFuture<'static, LookupResult>>;

struct Flight {
    id: u64,
    result: SharedResult,
}

#[derive(Default)]
pub struct SingleFlight {
    map: Arc<Mutex<HashMap<String, Flight>>>,
    next_id: AtomicU64,
}

impl SingleFlight {
    /// Runs `call` unless a call for `key` is already in flight, and returns its result.
    pub async fn run(
        &self,
        key: String,
        lookup: &str,
        call: BoxFuture<'static, LookupResult>,
    ) -> LookupResult {
        let result = {
            let mut map = match self.map.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            match map.get(&key) {
                Some(f) => f.result.clone(),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let task_map = self.map.clone();
                    let task_key = key.clone();
                    tokio::spawn(async move {
                        let r = call.await;
                        if let Ok(mut m) = task_map.lock() {
                            if m.get(&task_key).is_some_and(|f| f.id == id) {
                                m.remove(&task_key);
                            }
                        }
                        let _ = tx.send(r);
                    });
                    let name = lookup.to_owned();
                    let result: BoxFuture<'static, LookupResult> = Box::pin(async move {
                        rx.await.unwrap_or_else(|_| {
                            Err(LookupError::Source {
                                lookup: name,
                                message: "the lookup call was aborted".to_owned(),
                            })
                        })
                    });
                    let result = result.shared();
                    map.insert(
                        key,
                        Flight {
                            id,
                            result: result.clone(),
                        },
                    );
                    result
                }
            }
        };
        result.await
    }

    /// Calls in flight (for tests).
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_for_one_key_make_one_call() {
        let sf = Arc::new(SingleFlight::default());
        let calls = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..20 {
            let sf = sf.clone();
            let calls = calls.clone();
            handles.push(tokio::spawn(async move {
                let call: BoxFuture<'static, LookupResult> = Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(Arc::new(json!(42)))
                });
                sf.run("k".into(), "l", call).await
            }));
        }
        for h in handles {
            assert_eq!(*h.await.unwrap().unwrap(), json!(42));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0, "finished calls are removed");
        // a later call runs again
        let call: BoxFuture<'static, LookupResult> = Box::pin(async { Ok(Arc::new(json!(1))) });
        assert_eq!(*sf.run("k".into(), "l", call).await.unwrap(), json!(1));
    }
}
