-- pg_observers: the id floor of a checkpoint
--
-- batch_open() records pairs (xid X, event sequence value seq) in observers.checkpoint: any
-- transaction whose xid is greater than X wrote only events with ids greater than seq (see
-- "Where a batch starts: id floors" in docs/ARCHITECTURE.md). For a cursor k, take the latest
-- pair with X < pg_snapshot_xmin(k.snap_lo): every event that k has not passed was written by a
-- transaction with an xid >= pg_snapshot_xmin(k.snap_lo) > X, so its id is greater than that
-- pair's seq. Anything that looks for the events a group has not passed (status(),
-- checkpoint_show(), maintain()) may therefore start at `id > _id_floor(k)` on the id index
-- instead of scanning the outbox: the outbox has no index on txid, because every index of the
-- outbox is paid for by every write of an observed table.
-- k NULL (a group without a checkpoint) or no usable pair: 0.
CREATE FUNCTION observers._id_floor(k observers.checkpoint)
RETURNS bigint
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT s.seq
                       FROM unnest(k.floor_xids, k.floor_seqs) WITH ORDINALITY AS s (xid, seq, i)
                      WHERE s.xid < pg_snapshot_xmin(k.snap_lo)
                      ORDER BY s.i DESC
                      LIMIT 1), 0)
$$;
