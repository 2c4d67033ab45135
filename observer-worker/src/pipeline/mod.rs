//! The delivery pipeline: lease -> consumer (snapshot cursor) -> dispatcher
//! (per-key order, bounded) -> handler (actions, dead letters) -> checkpoint.

pub mod checkpoint;
pub mod consumer;
pub mod dispatcher;
pub mod executor;
pub mod handler;
pub mod lease;
pub mod registry;
