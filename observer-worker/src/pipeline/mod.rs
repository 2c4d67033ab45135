//! The delivery pipeline: lease -> consumer (snapshot cursor) -> dispatcher
//! (per-key order, bounded) -> handler (actions, dead letters, parked pairs) -> checkpoint;
//! beside it, the parked-pairs loop (pairs whose destination's circuit breaker was open, or
//! whose observer was broken: see `broken`); and the job runner (`jobs`), which every worker
//! of the group with `job_queue` enabled runs. `pressure` tells work that may lag (the
//! Elasticsearch sink) when delivery is behind.

pub mod attempt_log;
pub mod broken;
pub mod checkpoint;
pub mod consumer;
pub mod dispatcher;
pub mod executor;
pub mod handler;
pub mod jobs;
pub mod lease;
pub mod parked;
pub mod pressure;
pub mod registry;
