//! Every SQL statement the worker sends, in one place. The functions are the
//! contract in docs/ARCHITECTURE.md ("SQL contract between extension and worker").
//!
//! Casts through `text` (`$2::text::pg_snapshot`, `$2::text::regclass`) let the
//! driver send plain strings for types it has no Rust mapping for.

/// Is the extension installed (and which version)?
pub const EXTENSION_VERSION: &str =
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_observers'";

/// `lease_acquire(group, worker_id, ttl)` -> epoch or NULL.
pub const LEASE_ACQUIRE: &str = "SELECT observers.lease_acquire($1, $2, make_interval(secs => $3))";

/// `lease_release(group, worker_id, epoch)` -> boolean.
pub const LEASE_RELEASE: &str = "SELECT observers.lease_release($1, $2, $3)";

/// `batch_open(group, epoch)` -> the open batch (fenced).
pub const BATCH_OPEN: &str =
    "SELECT snap_lo::text, snap_hi::text, last_id, max_id FROM observers.batch_open($1, $2)";

/// `batch_fetch(group, snap_lo, snap_hi, after_id, max_id, lim)` -> events by id.
pub const BATCH_FETCH: &str = "SELECT id, observer_id, ordering_key, body, NULL::text, \
     extract(epoch FROM captured_at)::float8 \
     FROM observers.batch_fetch($1, $2::text::pg_snapshot, $3::text::pg_snapshot, $4, $5, $6)";

/// [`BATCH_FETCH`] plus each event's UTC capture day (deduplication and parking need it; the
/// plain query skips the per-row formatting).
pub const BATCH_FETCH_WITH_DAY: &str = "SELECT id, observer_id, ordering_key, body, \
     to_char(captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), \
     extract(epoch FROM captured_at)::float8 \
     FROM observers.batch_fetch($1, $2::text::pg_snapshot, $3::text::pg_snapshot, $4, $5, $6)";

/// `checkpoint_save(group, epoch, last_id)` (fenced).
pub const CHECKPOINT_SAVE: &str = "SELECT observers.checkpoint_save($1, $2, $3)";

/// `batch_close(group, epoch)` (fenced).
pub const BATCH_CLOSE: &str = "SELECT observers.batch_close($1, $2)";

/// `dlq_add(group, epoch, event_id, observer_id, action_index, action_type,
/// webhook_id, payload, error, attempts, last_status)` (fenced) -> dead letter id.
pub const DLQ_ADD: &str =
    "SELECT observers.dlq_add($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10, $11)";

/// `heartbeat(group, worker_id, info)`.
pub const HEARTBEAT: &str = "SELECT observers.heartbeat($1, $2, $3::jsonb)";

/// `observer_definitions(group)` -> what the worker runs.
pub const OBSERVER_DEFINITIONS: &str =
    "SELECT id, name, table_name::text, actions, ordering_key, enabled FROM observers.observer_definitions($1)";

/// Applies one observer of the configuration file. `actions` is the raw
/// (unexpanded) subtree, so secrets written as `${VAR}` stay placeholders.
pub const CREATE_OBSERVER: &str = "SELECT id FROM observers.create_observer(\
     name => $1, table_name => $2::text::regclass, events => $3, condition => $4, columns => $5, \
     ordering_key => $6, actions => $7::jsonb, group_name => $8, replace => true)";

/// `maintain()` -> one-line summary.
pub const MAINTAIN: &str = "SELECT observers.maintain()";

/// The installation's id (part of every webhook-id and deduplication key; one row).
pub const INSTALLATION_ID: &str = "SELECT id::text FROM observers.installation LIMIT 1";

/// `dedup_claim(keys, days, owner, claim_ttl, done_ttl)` -> (key, 'claimed'|'done'|'busy').
pub const DEDUP_CLAIM: &str =
    "SELECT key, state FROM observers.dedup_claim($1, $2::text[]::date[], $3, \
     make_interval(secs => $4), make_interval(secs => $5))";

/// `dedup_confirm(keys, days, ttl)`.
pub const DEDUP_CONFIRM: &str =
    "SELECT observers.dedup_confirm($1, $2::text[]::date[], make_interval(secs => $3))";

/// `dedup_release(keys, days, owner)`.
pub const DEDUP_RELEASE: &str = "SELECT observers.dedup_release($1, $2::text[]::date[], $3)";

/// `park_add(group, epoch, event_ids, observer_ids, action_indexes, action_types, webhook_ids,
/// days, destinations, bodies, attempts, last_errors)` (fenced, batched) -> rows written.
pub const PARK_ADD: &str =
    "SELECT observers.park_add($1, $2, $3, $4, $5, $6, $7, $8::text[]::date[], \
     $9, $10, $11, $12)";

/// `park_fetch(group, skip_destinations, skip_ids, lim)` -> parked pairs (breaker-parked, DLQ
/// retries, replays), oldest first.
pub const PARK_FETCH: &str = "SELECT id, event_id, observer_id, action_index, webhook_id, day, \
     destination, body, attempts, reason, force FROM observers.park_fetch($1, $2, $3, $4)";

/// `park_set_destination(group, id, destination)`: names the destination of a queued DLQ retry or
/// replay (queued from SQL without one).
pub const PARK_SET_DESTINATION: &str = "SELECT observers.park_set_destination($1, $2, $3)";

/// `park_finish(group, epoch, id, error, attempts, last_status)` (fenced).
pub const PARK_FINISH: &str = "SELECT observers.park_finish($1, $2, $3, $4, $5, $6)";

/// `dedup_done(keys, days)` -> the keys that are done and in force (NULL keys: one NULL row if
/// any done-mark is in force).
pub const DEDUP_DONE: &str = "SELECT key FROM observers.dedup_done($1, $2::text[]::date[])";

/// `attempt_add(worker_id, event_ids, observer_ids, action_indexes, attempts, ats, durations_ms,
/// statuses, outcomes, errors)` -> rows written (the attempt log, batched).
pub const ATTEMPT_ADD: &str =
    "SELECT observers.attempt_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Per observer of group `$1`: backlog, age of the oldest unfinished event (seconds), dead
/// letters, whether the group has a leader, and whether its capture is broken (`/metrics`,
/// refreshed every few seconds).
pub const OBSERVER_GAUGES: &str = "SELECT observer, coalesce(backlog, 0)::bigint, \
     coalesce(extract(epoch FROM oldest_undelivered_age), 0)::float8, \
     coalesce(dlq_count, 0)::bigint, leader IS NOT NULL, capture_error IS NOT NULL \
     FROM observers.status() WHERE group_name = $1";
