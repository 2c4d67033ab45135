//! End-to-end tests: the real `fraiseql-observers` binary, a real PostgreSQL 15 with
//! `CREATE EXTENSION pg_observers`, and a real HTTP receiver. One test binary (one shared
//! cluster, one link step); each test has its own database. See docs/TESTING.md.
//!
//! Prerequisites: the extension installed into /usr/lib/postgresql/15 (`make install-ext`) and
//! the worker built (`cargo build -p observer-worker`, or FRAISEQL_OBSERVERS_BIN).

#[path = "e2e/common.rs"]
mod common;

#[path = "e2e/apply.rs"]
mod apply;
#[path = "e2e/bad_config.rs"]
mod bad_config;
#[path = "e2e/breaker.rs"]
mod breaker;
#[path = "e2e/broken_observers.rs"]
mod broken_observers;
#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/cli_exact.rs"]
mod cli_exact;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/db_restart.rs"]
mod db_restart;
#[path = "e2e/dedup.rs"]
mod dedup;
#[path = "e2e/delivery.rs"]
mod delivery;
#[path = "e2e/dump_restore.rs"]
mod dump_restore;

#[path = "e2e/email.rs"]
mod email;

#[path = "e2e/event_ids.rs"]
mod event_ids;
#[path = "e2e/examples.rs"]
mod examples;
#[path = "e2e/failover.rs"]
mod failover;

#[path = "e2e/filters.rs"]
mod filters;
#[path = "e2e/guides.rs"]
mod guides;
#[path = "e2e/install.rs"]
mod install;
#[path = "e2e/jobs.rs"]
mod jobs;
#[path = "e2e/late_commit.rs"]
mod late_commit;
#[path = "e2e/lookups.rs"]
mod lookups;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/operations.rs"]
mod operations;
#[path = "e2e/ordering.rs"]
mod ordering;
#[path = "e2e/retries.rs"]
mod retries;
#[path = "e2e/search.rs"]
mod search;
#[path = "e2e/security_worker.rs"]
mod security_worker;
#[path = "e2e/shutdown.rs"]
mod shutdown;
