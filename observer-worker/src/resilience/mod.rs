//! Resilience layers around actions: deduplication (`dedup`), circuit breakers (`breaker`),
//! and the request coalescing they use (`batcher`). `pipeline::executor` composes them around
//! every action in one fixed order (see there).

pub mod batcher;
pub mod breaker;
pub mod dedup;

pub use breaker::{Admit, Breakers};
pub use dedup::{ClaimTry, Dedup, PairKey, Verdict};
