//! FraiseQL Observers worker (`fraiseql-observers`).
//!
//! Layout:
//! * [`config`] — parse, expand `${VAR}`, validate (pure).
//! * [`db`] — typed wrappers for the extension's SQL functions, pools, LISTEN.
//! * [`pipeline`] — lease, consumer loop, dispatcher, checkpoint tracker.
//! * [`actions`] — the `Action` trait; webhook, slack and the internal cache_evict actions.
//! * [`templates`] — minijinja templates of action fields (strict, compiled at config time).
//! * [`lookups`] — cached lookups (`lookup.<name>` in templates): sources, caches, eviction.
//! * [`retry`], [`signing`] — backoff policy and Standard Webhooks signatures.
//! * [`installation`] — this installation's id and the idempotency key (webhook-id) of a pair.
//! * [`search`] — the audit trail off the write path: the PostgreSQL search indexer and the
//!   Elasticsearch / OpenSearch sink.
//! * [`telemetry`] — logging, counters, `/metrics` and the health endpoints.
//! * [`worker`] — assembles everything for `start` (build, then named services under the
//!   [`supervisor`], stopped in order); [`commands`] — the CLI commands
//!   ([`metrics_cli`]: `fraiseql-observers metrics`).

#![forbid(unsafe_code)]

pub mod actions;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod installation;
pub mod lookups;
pub mod metrics_cli;
pub mod pipeline;
pub mod resilience;
pub mod retry;
pub mod search;
pub mod signing;
pub mod supervisor;
pub mod telemetry;
pub mod templates;
pub mod worker;
