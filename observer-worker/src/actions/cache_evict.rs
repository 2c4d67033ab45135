//! The internal `cache_evict` action: run by the `lookup_evict_<name>`
//! observers the worker creates on a lookup's `table:`, it makes every cached
//! entry of the lookup unreachable (the product observing itself).

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::{Action, AttemptError, BoxFuture, Delivered, Delivery};
use crate::config::actions::CacheEvictConfig;
use crate::lookups::Lookups;
use crate::retry::RetryPolicy;

pub const CACHE_EVICT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct CacheEvictAction {
    lookup: String,
    lookups: Arc<Lookups>,
    retry: RetryPolicy,
}

impl CacheEvictAction {
    pub fn new(cfg: &CacheEvictConfig, lookups: Arc<Lookups>) -> Self {
        CacheEvictAction {
            lookup: cfg.lookup.clone(),
            lookups,
            retry: cfg.retry.clone(),
        }
    }
}

impl Action for CacheEvictAction {
    fn type_name(&self) -> &'static str {
        crate::config::lookups::CACHE_EVICT_ACTION
    }

    fn timeout(&self) -> Duration {
        CACHE_EVICT_TIMEOUT
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn execute<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Delivered, AttemptError>> {
        Box::pin(async move {
            match self.lookups.evict(&self.lookup).await {
                Ok(true) => {
                    debug!(lookup = %self.lookup, event_id = d.event_id, "lookup cache evicted");
                    Ok(Delivered::default())
                }
                Ok(false) => {
                    debug!(lookup = %self.lookup, "cache_evict for a lookup this worker does not declare: nothing to do");
                    Ok(Delivered::default())
                }
                Err(e) => Err(e.into_attempt()),
            }
        })
    }
}
