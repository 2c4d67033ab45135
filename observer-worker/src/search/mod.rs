//! The searchable audit trail, off the write path (docs/SEARCH.md):
//!
//! * [`indexer`] — `search: enabled`: fills the PostgreSQL search index
//!   (`observers.search_index()`, a page per call) and keeps its partitions
//!   (`observers.search_maintain()`).
//! * [`elasticsearch`] — `elasticsearch: enabled`: copies every event into daily indices over the
//!   bulk API, effectively once (`create` with `_id` = the event's id; 409 counts as done), with
//!   its own cursor (feed `elasticsearch`) that moves only past acknowledged or dead-lettered
//!   items; [`bulk`] and [`document`] are its pure parts (bodies, batches, what each answer
//!   means; the document of an event, built from the outbox row).
//!
//! Both follow a feed cursor of the extension (52_search.sql) over the whole outbox, apart from
//! the delivery checkpoint of any group: a slow index never holds back webhooks.

pub mod bulk;
pub mod document;
pub mod elasticsearch;
pub mod indexer;
