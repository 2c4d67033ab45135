-- Leader lease takeover when the holder's database session has ended (issue 10): the lease
-- records the session that took or renewed it; once that session is gone a standby takes the
-- lease over at once (epoch + 1, fencing stays), while a lease held from a live session is never
-- taken before it expires. A standby's refused call writes nothing.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\d{4}-\d\d-\d\d[ T][0-9:.+-]+', '<timestamp>', 'g');
END
$$;
CREATE OR REPLACE FUNCTION connect(p_name text) RETURNS text LANGUAGE sql AS $$
    SELECT dblink_connect(p_name,
             format('host=%s port=%s dbname=%s user=%s',
                    coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                    current_setting('port'), current_database(), current_user))
$$;
-- the backend pid of a dblink session
CREATE OR REPLACE FUNCTION remote_pid(p_name text) RETURNS integer LANGUAGE sql AS $$
    SELECT pid FROM dblink(p_name, 'SELECT pg_backend_pid()') AS t(pid integer)
$$;
-- wait until a backend has exited (a disconnect returns before the server process is gone)
CREATE OR REPLACE PROCEDURE wait_gone(p_pid integer) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 500 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = p_pid);
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
CREATE VIEW lease AS
SELECT l.group_name, l.worker_id, l.epoch, l.expires_at > clock_timestamp() AS valid,
       EXISTS (SELECT 1 FROM pg_stat_activity a
                WHERE a.pid = l.holder_pid AND a.backend_start = l.holder_backend_start) AS holder_connected
  FROM observers.leader_lease AS l ORDER BY l.group_name;

-- a leader takes the lease on its own session ("leader"); the lease names that session
SELECT connect('leader');
SELECT remote_pid('leader') AS leader_pid \gset
SELECT epoch FROM dblink('leader', $$SELECT observers.lease_acquire('g', 'w1', '1 hour')$$) AS t(epoch bigint);
SELECT holder_pid = :leader_pid AS records_the_leader_session FROM observers.leader_lease WHERE group_name = 'g';
SELECT * FROM lease;

-- its session is alive: a standby is refused, however often it asks, and writes nothing
-- (no transaction id, no row lock: standbys may poll every few hundred milliseconds)
BEGIN;
SELECT observers.lease_acquire('g', 'w2', '1 hour') IS NULL AS refused_while_leader_connected;
SELECT observers.lease_acquire('g', 'w2', '1 hour') IS NULL AS refused_again;
SELECT pg_current_xact_id_if_assigned() IS NULL AS wrote_nothing;
COMMIT;
-- the leader renews: same epoch
SELECT epoch FROM dblink('leader', $$SELECT observers.lease_acquire('g', 'w1', '1 hour')$$) AS t(epoch bigint);

-- status() names the leader while its session is connected
DROP TABLE IF EXISTS public.lease_takeover_t;
CREATE TABLE public.lease_takeover_t (id int PRIMARY KEY);
SELECT name FROM observers.create_observer('o', 'public.lease_takeover_t', group_name => 'g');
SELECT observer, leader FROM observers.status();

-- the leader crashes: its session ends long before the lease's hour is over
SELECT dblink_disconnect('leader');
CALL wait_gone(:leader_pid);
SELECT * FROM lease;
-- status() shows no leader at once (not a dead one until the lease expires)
SELECT observer, leader FROM observers.status();
-- a standby takes over at once, with a new epoch, and the lease now names the standby's session
SELECT observers.lease_acquire('g', 'w2', '1 hour') AS takeover_epoch;
SELECT holder_pid = pg_backend_pid() AS records_the_new_session FROM observers.leader_lease WHERE group_name = 'g';
SELECT * FROM lease;
SELECT observer, leader FROM observers.status();
-- fencing stays: the crashed leader's epoch is refused, the new one accepted
SELECT try($$SELECT observers.checkpoint_save('g', 1, 0)$$);
SELECT try($$SELECT observers.batch_open('g', 2)$$);
-- and a second standby cannot take it from the new, connected leader
SELECT epoch FROM (SELECT connect('standby')) AS c,
       dblink('standby', $$SELECT observers.lease_acquire('g', 'w3', '1 hour')$$) AS t(epoch bigint);

-- a leader that reconnected (its connection broke and the pool opened a new one) renews its
-- own lease from the new session with the same epoch, if nobody took it meanwhile
SELECT epoch FROM dblink('standby', $$SELECT observers.lease_acquire('g2', 'w3', '1 hour')$$) AS t(epoch bigint);
SELECT remote_pid('standby') AS standby_pid \gset
SELECT dblink_disconnect('standby');
CALL wait_gone(:standby_pid);
SELECT connect('standby');
SELECT epoch FROM dblink('standby', $$SELECT observers.lease_acquire('g2', 'w3', '1 hour')$$) AS t(epoch bigint);
SELECT holder_pid = remote_pid('standby') AS records_the_reconnected_session
  FROM observers.leader_lease WHERE group_name = 'g2';

SELECT dblink_disconnect('standby');

-- a pid that a new session reuses does not keep a dead holder's lease: the session's start
-- time must match too
UPDATE observers.leader_lease
   SET holder_pid = pg_backend_pid(), holder_backend_start = holder_backend_start + interval '1 microsecond'
 WHERE group_name = 'g2';
SELECT observers.lease_acquire('g2', 'w4', '1 hour') AS takeover_despite_reused_pid;

-- a lease whose session is unknown (NULL) is only freed by its expiry
UPDATE observers.leader_lease SET holder_pid = NULL, holder_backend_start = NULL WHERE group_name = 'g2';
SELECT observers.lease_acquire('g2', 'w5', '1 hour') IS NULL AS unknown_session_is_kept;
-- a holder whose session ended with a restart of PostgreSQL (it started before the server did)
-- keeps its lease until it expires: it is reconnecting to renew it, and a standby that happens
-- to reconnect first must not take it over
UPDATE observers.leader_lease
   SET holder_pid = -1, holder_backend_start = pg_postmaster_start_time() - interval '1 second'
 WHERE group_name = 'g2';
SELECT observers.lease_acquire('g2', 'w5', '1 hour') IS NULL AS kept_across_a_server_restart;
SELECT observers.lease_acquire('g2', 'w4', '1 hour') AS holder_renews_from_a_new_session;
-- the same pid gone without a restart (started after the server did): taken over
UPDATE observers.leader_lease
   SET holder_pid = -1, holder_backend_start = pg_postmaster_start_time() + interval '1 second'
 WHERE group_name = 'g2';
SELECT observers.lease_acquire('g2', 'w5', '1 hour') AS taken_over;
SELECT * FROM lease;

-- A takeover from a crashed leader frees its deduplication claims at once: the new leader runs
-- the pairs the dead one was executing without waiting for their claims to expire.
CREATE FUNCTION dd_claim(p_owner text, p_key bytea DEFAULT '\x01') RETURNS text LANGUAGE sql AS $$
    SELECT state FROM observers.dedup_claim(ARRAY[p_key], ARRAY[(now() AT TIME ZONE 'UTC')::date],
                                            p_owner, '1 hour', '1 hour')
$$;
SELECT connect('dead');
SELECT remote_pid('dead') AS dead_pid \gset
SELECT epoch FROM dblink('dead', $$SELECT observers.lease_acquire('g3', 'w-dead', '1 hour')$$) AS t(epoch bigint);
-- (the worker's claims name its incarnation: '<worker id>/<random>')
SELECT dd_claim('w-dead/00ff') AS claimed_by_the_leader;
-- another worker whose id merely starts like the leader's holds a claim too
SELECT dd_claim('w-dead-2/01', '\x02') AS claimed_by_a_look_alike;
-- while the leader lives, its claim holds against anyone else
SELECT dd_claim('w-new/01') AS while_alive;
SELECT dblink_disconnect('dead');
CALL wait_gone(:dead_pid);
-- its session ended, but nobody took its lease over yet: the claim still holds
SELECT dd_claim('w-new/01') AS dead_but_not_taken_over;
SELECT observers.lease_acquire('g3', 'w-new', '1 hour') AS takeover_epoch;
SELECT owner FROM observers.dedup_dead_owner ORDER BY owner;
SELECT dd_claim('w-new/01') AS after_the_takeover;
SELECT dd_claim('w-new/01', '\x02') AS look_alike_still_holds;
-- a takeover after a release or an expiry lists nobody (the holder's session was alive or unknown)
SELECT observers.lease_release('g3', 'w-new', 2) AS released;
SELECT observers.lease_acquire('g3', 'w-other', '1 hour') AS epoch_after_release;
SELECT owner FROM observers.dedup_dead_owner ORDER BY owner;
-- the crashed worker, restarted under its id, leaves the list at its first lease call
SELECT observers.lease_acquire('g3', 'w-dead', '1 hour') IS NULL AS standby_again;
SELECT owner FROM observers.dedup_dead_owner ORDER BY owner;
