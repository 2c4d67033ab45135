-- pg_observers: deduplication state of the `postgres` backend (and the fallback of the `redis`
-- backend). See docs/RESILIENCE.md.
--
-- One row per (observer, action, event) pair that a worker claimed or finished. `key` is the
-- SHA-256 of an unambiguous encoding of the pair, computed by the worker. The row is
--   state 'c' (claimed by `owner` until `claim_until`: a worker is executing it right now), or
--   state 'd' (done: it succeeded; never executed again before `expires_at`).
-- A failed attempt deletes its claim, so a retry (by any worker) can run.
--
-- Expired without bloat: the table is partitioned by `day`, the UTC day the event was captured
-- (every worker computes the same day for the same pair, so the primary key holds), and
-- observers.maintain() drops a whole past partition once none of its rows is still in force.
-- Rows whose day has no partition land in dedup_default, which maintain() trims with a DELETE
-- (only after maintain() did not run for a week).

-- This installation's identity: part of every deduplication key (two databases that share one
-- Redis never mistake each other's event ids for their own) and of every webhook-id (two
-- databases that feed one receiver never send the same id; observers._webhook_id).
--
-- Exactly one row, kept by pg_dump (10_tables.sql): a restore runs CREATE EXTENSION, which
-- inserts a fresh row, and then loads the dumped one. The trigger below makes the row inserted
-- last replace the others, so the restored database keeps the id it had, and the unique index
-- refuses a second row if the trigger was bypassed (a data-only restore with --disable-triggers
-- then fails loudly instead of leaving two ids). A database copied with CREATE DATABASE ...
-- TEMPLATE keeps the id too; give a copy that runs beside the original its own id
-- (docs/OPERATIONS.md).
CREATE TABLE observers.installation (
    id         uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX installation_one_row ON observers.installation ((true));
COMMENT ON TABLE observers.installation IS
    'One row: this installation''s id (part of every deduplication key and webhook-id; kept by pg_dump).';

CREATE FUNCTION observers._installation_replace()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM observers.installation;
    RETURN NEW;
END
$$;
CREATE TRIGGER installation_replace BEFORE INSERT ON observers.installation
    FOR EACH ROW EXECUTE FUNCTION observers._installation_replace();

INSERT INTO observers.installation DEFAULT VALUES;
SELECT pg_catalog.pg_extension_config_dump('observers.installation', '');

-- This installation's id (NULL only if someone deleted the row).
CREATE FUNCTION observers._installation_id()
RETURNS uuid
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT i.id FROM observers.installation AS i $$;

CREATE TABLE observers.dedup (
    key         bytea       NOT NULL,
    day         date        NOT NULL,
    state       "char"      NOT NULL CONSTRAINT dedup_state_valid CHECK (state IN ('c', 'd')),
    owner       text,
    claim_until timestamptz,
    expires_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, day)
) PARTITION BY RANGE (day);
COMMENT ON TABLE observers.dedup IS
    'Deduplication state per (observer, action, event) pair: c = claimed (being executed), d = done. Partitioned by the event''s capture day; maintain() drops expired days.';

CREATE TABLE observers.dedup_default PARTITION OF observers.dedup DEFAULT;

-- Workers known to have crashed: a leader whose database session had ended when another worker
-- took its lease over (lease_acquire). Their claims (owner '<worker id>' or, as the worker
-- writes them, '<worker id>/<incarnation>') count as expired, so the pairs they were
-- executing run again at once instead of after claim_until. A worker leaves the list as soon as
-- it calls lease_acquire again (restarted under the same id, or reconnected). Tiny: one row per
-- crashed worker id; maintain() forgets rows older than a day.
CREATE TABLE observers.dedup_dead_owner (
    owner text PRIMARY KEY,
    since timestamptz NOT NULL
);
COMMENT ON TABLE observers.dedup_dead_owner IS
    'Workers whose session had ended when their leader lease was taken over: their deduplication claims count as expired (lease_acquire writes it, dedup_claim reads it).';

-- Claim pairs for `owner`: a pair is claimed when it has no row, or its claim expired or belongs
-- to a crashed worker (observers.dedup_dead_owner), or its done-mark expired. Returns one row per input key: 'claimed' (run it), 'done' (it already
-- succeeded: skip it) or 'busy' (another worker is executing it: ask again later).
CREATE FUNCTION observers.dedup_claim(keys bytea[], days date[], owner text, claim_ttl interval,
                                      done_ttl interval)
RETURNS TABLE (key bytea, state text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH input AS (
        SELECT DISTINCT ON (k) k, d FROM unnest(keys, days) AS u(k, d) ORDER BY k
    ), claimed AS (
        INSERT INTO observers.dedup AS t (key, day, state, owner, claim_until, expires_at)
        SELECT i.k, i.d, 'c', owner, now() + claim_ttl, now() + done_ttl FROM input AS i
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
           SET state = 'c', owner = excluded.owner, claim_until = excluded.claim_until,
               expires_at = excluded.expires_at, updated_at = now()
         WHERE (t.state = 'c' AND (t.claim_until < now() OR t.owner = excluded.owner
                                   -- owners are '<worker id>/<incarnation>' (the worker's)
                                   OR EXISTS (SELECT 1 FROM observers.dedup_dead_owner AS z
                                               WHERE t.owner = z.owner
                                                  OR left(t.owner, length(z.owner) + 1) = z.owner || '/')))
            OR (t.state = 'd' AND t.expires_at < now())
        RETURNING t.key
    )
    SELECT i.k,
           CASE WHEN c.key IS NOT NULL THEN 'claimed'
                WHEN (SELECT x.state FROM observers.dedup AS x WHERE x.key = i.k AND x.day = i.d) = 'd'
                     THEN 'done'
                ELSE 'busy' END
      FROM input AS i LEFT JOIN claimed AS c ON c.key = i.k
$$;

-- Mark pairs done (they succeeded) until now() + ttl, whoever held the claim.
CREATE FUNCTION observers.dedup_confirm(keys bytea[], days date[], ttl interval)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO observers.dedup AS t (key, day, state, owner, claim_until, expires_at)
    SELECT DISTINCT ON (k) k, d, 'd', NULL, NULL, now() + ttl
      FROM unnest(keys, days) AS u(k, d) ORDER BY k
    ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
       SET state = 'd', owner = NULL, claim_until = NULL, expires_at = excluded.expires_at,
           updated_at = now()
$$;

-- Give up `owner`'s claims (the attempt failed): the pair may run again at once.
CREATE FUNCTION observers.dedup_release(keys bytea[], days date[], owner text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM observers.dedup AS t
     USING unnest(keys, days) AS u(k, d)
     WHERE t.key = u.k AND t.day = u.d AND t.state = 'c' AND t.owner = dedup_release.owner
$$;

-- The keys among `keys` that are done and in force. With `backend: redis`, pairs confirmed here
-- while Redis was unreachable are not in Redis: the worker asks this before running a pair that
-- Redis let it claim, as long as any done-mark made here is in force (`NULL` keys: only that).
CREATE FUNCTION observers.dedup_done(keys bytea[], days date[])
RETURNS TABLE (key bytea)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.key
      FROM observers.dedup AS t
     WHERE keys IS NOT NULL
       AND (t.key, t.day) IN (SELECT k, d FROM unnest(keys, days) AS u(k, d))
       AND t.state = 'd' AND t.expires_at > now()
    UNION ALL
    SELECT NULL::bytea
     WHERE keys IS NULL
       AND EXISTS (SELECT 1 FROM observers.dedup AS t WHERE t.state = 'd' AND t.expires_at > now())
$$;

-- Day partitions (observers.dedup here, observers.attempt in 37_operations.sql): create the
-- partition <prefix>YYYYMMDD of `p_parent` for [p_day, p_day + 1) unless it exists, as a member
-- of the extension readable by operators. False when it exists, or could not be created now
-- (lock timeout, or the DEFAULT partition holds rows of that day): the next maintain() retries.
CREATE FUNCTION observers._create_day_partition(p_parent regclass, p_prefix text, p_day date,
                                                p_storage text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := p_prefix || to_char(p_day, 'YYYYMMDD');
    v_rel  regclass;
BEGIN
    IF to_regclass('observers.' || v_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE observers.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L) %s',
                   v_name, p_parent, p_day, p_day + 1, p_storage);
    v_rel := ('observers.' || v_name)::regclass;
    IF NOT observers._is_extension_member(v_rel) THEN
        EXECUTE format('ALTER EXTENSION pg_observers ADD TABLE %s', v_rel);
    END IF;
    EXECUTE format('GRANT SELECT ON %s TO observers_admin', v_rel);
    RETURN true;
EXCEPTION WHEN lock_not_available OR check_violation THEN
    RETURN false;
END
$$;

-- Drops a day partition (leaving the extension first). False on a lock timeout.
CREATE FUNCTION observers._drop_day_partition(p_rel regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF observers._is_extension_member(p_rel) THEN
        EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', p_rel);
    END IF;
    EXECUTE format('DROP TABLE %s', p_rel);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END
$$;

-- The day partitions of `p_parent` named <prefix>YYYYMMDD, with their day.
CREATE FUNCTION observers._day_partitions(p_parent regclass, p_prefix text)
RETURNS TABLE (rel regclass, day date)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass, to_date(substr(c.relname, length(p_prefix) + 1), 'YYYYMMDD')
      FROM pg_inherits AS i
      JOIN pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = p_parent
       AND c.relname ~ ('^' || p_prefix || '[0-9]{8}$')
$$;

-- Called by maintain(): partitions for today - 1 .. today + 7, drop past partitions with no
-- row in force, trim dedup_default. Returns a summary fragment.
CREATE FUNCTION observers._maintain_dedup()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_today   date := (now() AT TIME ZONE 'UTC')::date;
    v_live    boolean;
    v_created int := 0;
    v_dropped int := 0;
    v_deleted bigint := 0;
    r         record;
BEGIN
    FOR i IN -1..7 LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM observers.dedup_default WHERE day = v_today + i);
        -- fillfactor: a confirmation updates its claim in place (HOT) on the same page
        IF observers._create_day_partition('observers.dedup', 'dedup_p', v_today + i,
                                           'WITH (fillfactor = 70)') THEN
            v_created := v_created + 1;
        END IF;
    END LOOP;

    FOR r IN SELECT * FROM observers._day_partitions('observers.dedup', 'dedup_p') LOOP
        CONTINUE WHEN r.day >= v_today - 1;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE expires_at > now() OR claim_until > now())', r.rel)
           INTO v_live;
        CONTINUE WHEN v_live;
        IF observers._drop_day_partition(r.rel) THEN
            v_dropped := v_dropped + 1;
        END IF;
    END LOOP;

    DELETE FROM observers.dedup_default
     WHERE expires_at < now() AND (claim_until IS NULL OR claim_until < now());
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    -- crashed workers listed more than a day ago: their claims expired long since, unless an
    -- action's timeout is longer than a day (those then wait for claim_until, as before)
    DELETE FROM observers.dedup_dead_owner WHERE since < now() - interval '1 day';

    RETURN format('dedup: created %s, dropped %s partitions, deleted %s expired rows from dedup_default',
                  v_created, v_dropped, v_deleted);
END
$$;
