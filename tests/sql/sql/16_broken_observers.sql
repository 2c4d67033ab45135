-- Broken observers (issue 9, item 10): create_observer refuses action types the worker cannot
-- run, and status() reports an observer a running worker cannot build (its heartbeat lists it
-- in info.broken_observers) in the `broken` column.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, total numeric);

-- the action types of this version are accepted (cache_evict is the worker's own lookup eviction;
-- the type is trimmed like the worker trims it)
SELECT name, actions->0->>'type' AS type FROM observers.create_observer('hook', 'shop.orders',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/a"}]', group_name => 'g');
SELECT name, actions->0->>'type' AS type FROM observers.create_observer('chat', 'shop.orders',
    actions => '[{"type": " slack ", "webhook_url": "http://127.0.0.1:9/s", "text": "x"}]', group_name => 'g');
SELECT name, actions->0->>'type' AS type FROM observers.create_observer('evict', 'shop.orders',
    actions => '[{"type": "cache_evict", "lookup": "customer"}]', group_name => 'g');

-- an unknown type is refused at creation (the worker would find the observer broken), with the
-- known types in the hint; so is a type of a later version
SELECT observers.create_observer('bad', 'shop.orders', actions => '[{"type": "webhok", "url": "http://x"}]');
SELECT observers.create_observer('bad', 'shop.orders',
    actions => '[{"type": "webhook", "url": "http://x"}, {"type": "Webhook", "url": "http://x"}]');
SELECT observers.create_observer('bad', 'shop.orders', actions => '[{"type": "search", "index": "orders"}]');
SELECT observers.create_observer('bad', 'shop.orders', actions => '[{"type": "job"}]');
SELECT count(*) AS created FROM observers.observer WHERE name = 'bad';
-- replacing a good observer with an unknown type fails and keeps the old definition
SELECT observers.create_observer('hook', 'shop.orders', actions => '[{"type": "pigeon"}]',
    group_name => 'g', replace => true);
SELECT actions->0->>'type' AS type FROM observers.observer WHERE name = 'hook';
-- the worker role (which applies its YAML file's observers) gets the same answer
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_h2_worker;
RESET client_min_messages;
CREATE ROLE regress_h2_worker LOGIN IN ROLE observers_worker;
GRANT USAGE ON SCHEMA shop TO regress_h2_worker;
GRANT SELECT ON shop.orders TO regress_h2_worker;
SET ROLE regress_h2_worker;
SELECT observers.create_observer('bad', 'shop.orders', actions => '[{"type": "sms"}]');
SELECT name FROM observers.create_observer('from_yaml', 'shop.orders',
    actions => '[{"type": "webhook", "url": "${HOOK_URL}"}]', group_name => 'g');
RESET ROLE;
SELECT observers.drop_observer('from_yaml');

-- status(): `broken` is NULL while no running worker reports a problem
SELECT observer, broken FROM observers.status() ORDER BY observer;

-- a worker of group g reports 'hook' broken in its heartbeat (as the worker role does)
SET ROLE regress_h2_worker;
SELECT observers.heartbeat('g', 'w1', jsonb_build_object('role', 'leader',
    'broken_observers', jsonb_build_array(jsonb_build_object(
        'observer_id', (SELECT id FROM observers.observer WHERE name = 'hook'), 'observer', 'hook',
        'problem', 'actions[0].url: environment variable HOOK_URL is not set; its events are parked until it is fixed'))));
RESET ROLE;
SELECT observer, broken FROM observers.status() ORDER BY observer;

-- a second running worker with another problem for the same observer: both, once each
SELECT observers.heartbeat('g', 'w2', jsonb_build_object('role', 'standby',
    'broken_observers', jsonb_build_array(
        jsonb_build_object('observer_id', (SELECT id FROM observers.observer WHERE name = 'hook'),
                           'problem', 'actions[0].url: environment variable HOOK_URL is not set; its events are parked until it is fixed'),
        jsonb_build_object('observer_id', (SELECT id FROM observers.observer WHERE name = 'chat'),
                           'problem', 'actions[0].text: unknown lookup `nope`; its events are parked until it is fixed'))));
SELECT observer, broken FROM observers.status() ORDER BY observer;

-- what does not count: a worker of another group, a worker that stopped, a stale heartbeat
SELECT observers.heartbeat('other', 'w3', jsonb_build_object('broken_observers', jsonb_build_array(
    jsonb_build_object('observer_id', (SELECT id FROM observers.observer WHERE name = 'evict'), 'problem', 'other group'))));
SELECT observers.heartbeat('g', 'w2', jsonb_build_object('role', 'stopped',
    'broken_observers', jsonb_build_array(
        jsonb_build_object('observer_id', (SELECT id FROM observers.observer WHERE name = 'chat'), 'problem', 'stopped'))));
SELECT observer, broken FROM observers.status() ORDER BY observer;
UPDATE observers.worker SET last_seen = now() - interval '1 minute' WHERE worker_id = 'w1';
SELECT observer, broken FROM observers.status() ORDER BY observer;

-- a malformed report never makes status() fail
SELECT observers.heartbeat('g', 'w4', '{"broken_observers": {"not": "an array"}}');
SELECT observers.heartbeat('g', 'w5', '{"broken_observers": [{"observer_id": "x"}, 7, null, {"problem": "no id"}]}');
SELECT observers.heartbeat('g', 'w6', jsonb_build_object('broken_observers', jsonb_build_array(
    jsonb_build_object('observer_id', (SELECT id FROM observers.observer WHERE name = 'evict')))));
SELECT observer, broken FROM observers.status() ORDER BY observer;

DROP SCHEMA shop CASCADE;
DROP EXTENSION pg_observers CASCADE;
DROP ROLE regress_h2_worker;
