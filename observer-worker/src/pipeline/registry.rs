//! The observers the worker runs, built from `observers.observer_definitions(group)`.
//!
//! The database is the source of truth: observers from the YAML file were
//! applied there at start, observers created in SQL are picked up the same
//! way. `${VAR}` placeholders in actions are expanded here, from the worker's
//! environment, but only the variables the worker's file allows for that observer
//! (`action_secrets:` and the file's own observers; see `config::secrets`).
//!
//! An observer whose actions cannot be built (unset or not allowed variable,
//! unknown action type, bad URL) is **broken** (see [`super::broken`]): its events are parked —
//! neither delivered nor skipped, and without holding the other observers of
//! the group — or, with an `ordering_key`, held; the problem is logged as an
//! error on every reload and reported in heartbeats until it is fixed (in SQL,
//! or by setting the variable and restarting).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::broken::{parked_destination, BrokenObserver};
use crate::actions::egress::Egress;
use crate::actions::{self, Action};
use crate::config::actions::actions_from_json_with_lookups;
use crate::config::{ActionSecrets, Env};
use crate::db::{Db, DbError};
use crate::lookups::Lookups;
use crate::retry::RetryPolicy;

/// How often a held event re-checks its observer (reloading definitions).
pub const BROKEN_RECHECK: Duration = Duration::from_secs(10);
/// Minimum time between reloads triggered by an unknown observer id.
const UNKNOWN_RELOAD_MIN: Duration = Duration::from_millis(500);

pub struct RuntimeObserver {
    pub id: i32,
    pub name: String,
    pub actions: Vec<Arc<dyn Action>>,
}

#[derive(Clone)]
pub enum ObserverEntry {
    Ready(Arc<RuntimeObserver>),
    Broken(Arc<BrokenObserver>),
}

/// What to do with an event of an observer: run it, or park it (its observer is broken).
pub enum Runnable {
    Ready(Arc<RuntimeObserver>),
    Broken(Arc<BrokenObserver>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSummary {
    pub ready: usize,
    pub broken: usize,
}

pub struct ObserverRegistry {
    db: Db,
    group: String,
    env: Arc<dyn Env>,
    /// Which variables each observer's actions may expand.
    secrets: Arc<ActionSecrets>,
    retry: RetryPolicy,
    http: Egress,
    lookups: Arc<Lookups>,
    lookup_names: Vec<String>,
    entries: RwLock<HashMap<i32, ObserverEntry>>,
    last_reload: tokio::sync::Mutex<Option<Instant>>,
}

impl ObserverRegistry {
    pub fn new(
        db: Db,
        group: String,
        env: Arc<dyn Env>,
        secrets: Arc<ActionSecrets>,
        retry: RetryPolicy,
        http: Egress,
        lookups: Arc<Lookups>,
    ) -> Self {
        ObserverRegistry {
            db,
            group,
            env,
            secrets,
            retry,
            http,
            lookup_names: lookups.names(),
            lookups,
            entries: RwLock::new(HashMap::new()),
            last_reload: tokio::sync::Mutex::new(None),
        }
    }

    pub fn get(&self, id: i32) -> Option<ObserverEntry> {
        self.entries.read().ok().and_then(|m| m.get(&id).cloned())
    }

    /// Loads all definitions of the group and replaces the registry.
    pub async fn reload(&self) -> Result<LoadSummary, DbError> {
        let mut guard = self.last_reload.lock().await;
        let summary = self.reload_locked().await?;
        *guard = Some(Instant::now());
        Ok(summary)
    }

    /// Reloads unless another reload happened less than `min_age` ago.
    async fn reload_if_older(&self, min_age: Duration) -> Result<(), DbError> {
        let mut guard = self.last_reload.lock().await;
        if guard.is_some_and(|t| t.elapsed() < min_age) {
            return Ok(());
        }
        self.reload_locked().await?;
        *guard = Some(Instant::now());
        Ok(())
    }

    async fn reload_locked(&self) -> Result<LoadSummary, DbError> {
        let defs = self.db.observer_definitions(&self.group).await?;
        let mut map = HashMap::with_capacity(defs.len());
        let mut summary = LoadSummary::default();
        for def in defs {
            let env = self.secrets.env_for(&def.name, self.env.as_ref());
            let entry = match actions_from_json_with_lookups(
                &def.actions,
                &env,
                &self.retry,
                &self.lookup_names,
            ) {
                Ok(configs) => {
                    summary.ready += 1;
                    let built = configs
                        .iter()
                        .map(|c| actions::build(c, &self.http, &self.lookups))
                        .collect();
                    ObserverEntry::Ready(Arc::new(RuntimeObserver {
                        id: def.id,
                        name: def.name.clone(),
                        actions: built,
                    }))
                }
                Err(problems) => {
                    summary.broken += 1;
                    let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    let broken = BrokenObserver::new(&def, problems);
                    error!(
                        observer = %def.name,
                        observer_id = def.id,
                        problems = %broken.problems.join("; "),
                        "observer is broken: {} (fix its definition in SQL, or set the variable and restart the worker)",
                        broken.consequence(&self.group)
                    );
                    ObserverEntry::Broken(Arc::new(broken))
                }
            };
            debug!(observer = %def.name, observer_id = def.id, table = %def.table_name, enabled = def.enabled, "observer loaded");
            map.insert(def.id, entry);
        }
        if let Ok(mut entries) = self.entries.write() {
            *entries = map;
        }
        Ok(summary)
    }

    /// The broken observers, by name.
    pub fn broken(&self) -> Vec<Arc<BrokenObserver>> {
        let mut out: Vec<Arc<BrokenObserver>> = self
            .entries
            .read()
            .map(|m| {
                m.values()
                    .filter_map(|e| match e {
                        ObserverEntry::Broken(b) => Some(b.clone()),
                        ObserverEntry::Ready(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The destinations under which the pairs of broken observers are parked (the parked-pairs
    /// loop leaves them alone until their observer is fixed).
    pub fn broken_destinations(&self) -> Vec<String> {
        self.broken()
            .iter()
            .map(|b| parked_destination(b.id))
            .collect()
    }

    /// The heartbeat's `info.broken_observers` (shown by `observers.status()`).
    pub fn broken_report(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.broken()
                .iter()
                .map(|b| b.report(&self.group))
                .collect(),
        )
    }

    /// What to do with an event: its runnable observer, or its broken observer when the event
    /// may be parked (`may_park`: the observer has no ordering key). Waits (and reloads) while
    /// the observer is unknown, or broken and not parkable. `None` only when `stop` fires first.
    pub async fn runnable(
        &self,
        observer_id: i32,
        event_id: i64,
        may_park: bool,
        stop: &CancellationToken,
    ) -> Option<Runnable> {
        let mut announced = false;
        loop {
            match self.get(observer_id) {
                Some(ObserverEntry::Ready(o)) => {
                    if announced {
                        info!(observer = %o.name, event_id, "observer is runnable again; delivering held events");
                    }
                    return Some(Runnable::Ready(o));
                }
                Some(ObserverEntry::Broken(b)) if may_park && !b.ordered => {
                    return Some(Runnable::Broken(b));
                }
                Some(ObserverEntry::Broken { .. }) => {
                    if !announced {
                        debug!(observer_id, event_id, "event held: its observer is broken");
                        announced = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(BROKEN_RECHECK) => {}
                    }
                    if let Err(e) = self.reload_if_older(BROKEN_RECHECK).await {
                        debug!(error = %e, "reloading observer definitions failed");
                    }
                }
                None => {
                    // created after our last load (e.g. in SQL): load it now
                    if let Err(e) = self.reload_if_older(UNKNOWN_RELOAD_MIN).await {
                        debug!(error = %e, "reloading observer definitions failed");
                    }
                    if self.get(observer_id).is_some() {
                        continue;
                    }
                    if !announced {
                        error!(
                            observer_id,
                            event_id,
                            "event belongs to an observer this worker cannot find; it is held"
                        );
                        announced = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
