//! Test harness for FraiseQL Observers.
//!
//! * [`chaos`]: a writer that streams through restarts, lease holders, what the receiver saw
//!   around a failover (the chaos test and `bench-failover`);
//! * [`cluster`]: throwaway PostgreSQL 15 clusters and per-test databases with the extension;
//! * [`receiver`]: a scriptable, recording webhook receiver (also the `webhook-receiver` binary);
//! * [`worker`]: the real `fraiseql-observers` binary as a child process;
//! * [`proxy`]: a TCP proxy that can stop forwarding (a network partition, for failover tests);
//! * [`redis`]: a private `redis-server` per test, which a test can kill and start again;
//! * [`osmem`]: a private in-memory OpenSearch-API server (`osmem-server`) per test;
//! * [`util`]: waiting and small SQL helpers shared by the end-to-end tests and `bench-e2e`.
//!
//! See `docs/TESTING.md` for how the test tiers fit together.

pub mod chaos;
pub mod cluster;
pub mod osmem;
pub mod proxy;
pub mod receiver;
pub mod redis;
pub mod util;
pub mod worker;

pub use cluster::{fresh_db, fresh_db_on, shared_url, Cluster, TestDb};
pub use receiver::{Delivery, Receiver, Reply};
pub use redis::RedisServer;
pub use worker::Worker;
