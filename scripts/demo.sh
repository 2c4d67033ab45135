#!/usr/bin/env bash
# `make demo`: the main job, end to end, on the embedded default (PostgreSQL only).
#
#   1. a private PostgreSQL 15 cluster (/tmp/fraiseql-observers-demo, a free port)
#   2. database `demo` with the extension and an `orders` table
#   3. a local webhook receiver (127.0.0.1, a free port) that logs every delivery
#   4. the worker, started from scripts/demo/config.yaml, which observes `orders`
#   5. some changes (insert, update, delete, a rolled-back insert, a late-committing transaction)
#   6. what the receiver got, and what observers.status() says
#   7. operating it with the CLI: status, the dead letter of an observer whose endpoint is down,
#      debug-event of that event (every attempt), a dry-run retry, and the worker's /metrics
#
# At the end everything is stopped cleanly (worker SIGTERM, receiver, cluster) unless
# DEMO_KEEP=1, which leaves all three running and prints how to look around and stop them.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${DEMO_PGPORT:-$(free_port)}
rport=${DEMO_RECEIVER_PORT:-$(free_port)}
mport=${DEMO_METRICS_PORT:-$(free_port)}
sport=${DEMO_SMTP_PORT:-$(free_port)}
dir=${DEMO_DIR:-/tmp/fraiseql-observers-demo}
run=$top/.run/demo
bin=$top/target/debug
mkdir -p "$run"
rm -f "$run"/*.log "$run"/*.jsonl

b() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=demo
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/demo"
export HOOK_SECRET="whsec_$(printf 'fraiseql-observers-demo-secret' | base64)"
export RECEIVER_URL="http://127.0.0.1:$rport"
export METRICS_LISTEN="127.0.0.1:$mport"
export SMTP_PORT=$sport

worker_pid=""; receiver_pid=""; smtp_pid=""
stop_all() {
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "$receiver_pid" ] && kill -TERM "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null || true
  [ -n "$smtp_pid" ] && kill -TERM "$smtp_pid" 2>/dev/null && wait "$smtp_pid" 2>/dev/null || true
  scripts/pgcluster.sh stop "$dir" >/dev/null || true
}
if [ "${DEMO_KEEP:-0}" != 1 ]; then trap stop_all EXIT; fi

b "1. private PostgreSQL cluster on 127.0.0.1:$port"
scripts/pgcluster.sh destroy "$dir"
scripts/pgcluster.sh start "$dir" "$port"

b "2. database 'demo', the extension and an 'orders' table"
psql -q -d postgres -c "CREATE DATABASE demo"
psql -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION pg_observers;
CREATE TABLE orders (
  id          bigserial PRIMARY KEY,
  customer_id int       NOT NULL,
  total       numeric(10,2) NOT NULL,
  status      text      NOT NULL DEFAULT 'new'
);
SQL
psql -Atc "SELECT 'pg_observers ' || extversion FROM pg_extension WHERE extname = 'pg_observers'"

b "3. webhook receiver on $RECEIVER_URL (logs to .run/demo/deliveries.jsonl)"
"$bin/webhook-receiver" --listen "127.0.0.1:$rport" --log "$run/deliveries.jsonl" \
  --secret "$HOOK_SECRET" >"$run/receiver.log" 2>&1 &
receiver_pid=$!
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break
  kill -0 "$receiver_pid" 2>/dev/null || { cat "$run/receiver.log" >&2; echo "the receiver did not start" >&2; exit 1; }
  sleep 0.1
done

b "3b. a local SMTP server on 127.0.0.1:$sport (python3-aiosmtpd; mail logged to .run/demo/mail/messages.jsonl)"
/usr/bin/python3 tests/smtp/smtp_sink.py "$sport" "$run/mail" >"$run/smtp.log" 2>&1 &
smtp_pid=$!
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$sport") 2>/dev/null && break
  kill -0 "$smtp_pid" 2>/dev/null || { cat "$run/smtp.log" >&2; echo "the SMTP server did not start (apt-get install python3-aiosmtpd)" >&2; exit 1; }
  sleep 0.1
done

b "4. the worker: fraiseql-observers start --config scripts/demo/config.yaml"
sed -n '1,200p' scripts/demo/config.yaml | sed 's/^/    /'
"$bin/fraiseql-observers" start --config scripts/demo/config.yaml >"$run/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 100); do
  psql -Atc "SELECT count(*) FROM observers.observer" 2>/dev/null | grep -q '^[1-9]' && break
  sleep 0.1
done
psql -c "SELECT name, table_name, events, condition, columns, ordering_key FROM observers.observer ORDER BY name"

b "5. changes to orders"
set -x
psql -qc "INSERT INTO orders (customer_id, total) VALUES (1, 250.00), (2, 1800.00), (3, 99.90)"
psql -qc "UPDATE orders SET status = 'paid' WHERE customer_id = 2"
psql -qc "UPDATE orders SET total = total WHERE customer_id = 1"         # nothing in 'columns' changed: no event
psql -qc "BEGIN; INSERT INTO orders (customer_id, total) VALUES (9, 5000); ROLLBACK"   # rolled back: no event
psql -qc "DELETE FROM orders WHERE customer_id = 3"
{ set +x; } 2>/dev/null
echo "+ a late commit: session A inserts first but commits after session B"
psql -q <<'SQL' &
BEGIN; INSERT INTO orders (customer_id, total) VALUES (4, 4000); SELECT pg_sleep(1.5); COMMIT;
SQL
late=$!
sleep 0.3
psql -qc "INSERT INTO orders (customer_id, total) VALUES (5, 1500)"
wait "$late"

b "6. what the receiver got"
expected=10
for _ in $(seq 1 100); do
  n=$(wc -l <"$run/deliveries.jsonl" 2>/dev/null || echo 0)
  [ "$n" -ge "$expected" ] && break
  sleep 0.1
done
python3 - "$run/deliveries.jsonl" <<'PY'
import json, sys
from decimal import Decimal
# parse numbers as Decimal so they print exactly as delivered (1800.00 stays 1800.00)
rows = [json.loads(l, parse_float=Decimal) for l in open(sys.argv[1]) if l.strip()]
def show(d):
    return "{" + ", ".join(f'"{k}": {json.dumps(v) if not isinstance(v, Decimal) else v}' for k, v in d.items()) + "}"
print(f"{len(rows)} deliveries, in the order they arrived (signatures checked by the receiver)\n")
print(f"{'event':>5}  {'observer':<14} {'op':<7} {'sig':<4} {'webhook-id':<12} row")
for r in rows:
    body = r.get("body") or {}
    data = body.get("new") or body.get("old") or {}
    extra = f"  changed={body['changed']}" if body.get("changed") else ""
    sig = {True: "ok", False: "BAD", None: "-"}.get(r.get("signature_valid"))
    print(f"{body.get('id', '?'):>5}  {body.get('observer', '?'):<14} {body.get('op', '?'):<7} "
          f"{sig:<4} {r.get('webhook_id', '?'):<12} {show(data)}{extra}")
print("\nNot delivered, by design: the rolled-back insert (customer 9) and the UPDATE that changed")
print("no column in `columns`. The late transaction (customer 4) has lower event ids than")
print("customer 5's but committed later: it is delivered after it, not skipped.")
PY

for _ in $(seq 1 100); do   # warehouse_sync: the deleted order, dead-lettered after 2 attempts
  psql -Atc "SELECT count(*) FROM observers.dlq" | grep -q '^[1-9]' && break
  sleep 0.1
done

b "6b. the async e-mail (big_orders: mode: async, run through the job queue)"
for _ in $(seq 1 100); do
  [ -s "$run/mail/messages.jsonl" ] && [ "$(wc -l <"$run/mail/messages.jsonl")" -ge 3 ] && break
  sleep 0.1
done
/usr/bin/python3 - "$run/mail/messages.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    print(f"{m['message_id']}  to {', '.join(m['to'])}: {m['subject']!r} / {m['body'].strip()!r}")
PY
psql -c "SELECT id, state, event_id, attempts, worker_id FROM observers.job_list() ORDER BY id"

b "7. observers.status()"
psql -c "SELECT observer, group_name, backlog, oldest_undelivered_age, dlq_count, leader, workers FROM observers.status()"
echo "deduplication remembers each pair that succeeded (it is not executed again after a crash):"
psql -c "SELECT count(*) FILTER (WHERE state = 'd') AS pairs_done, count(*) FILTER (WHERE state = 'c') AS pairs_claimed, (SELECT count(*) FROM observers.parked) AS parked_pairs FROM observers.dedup"

b "8. operating it: the fraiseql-observers CLI (docs/CLI_TOOLS.md; the same functions work from psql)"
obs() { echo "\$ fraiseql-observers $*"; "$bin/fraiseql-observers" "$@" || true; echo; }
obs status
obs dlq list
obs jobs stats
dead=$(psql -Atc "SELECT event_id FROM observers.dlq ORDER BY id LIMIT 1")
obs debug-event "$dead"
obs dlq retry-all --observer warehouse_sync --dry-run
echo "(once the warehouse is back: fraiseql-observers dlq retry-all --observer warehouse_sync)"
echo
obs metrics --url "http://$METRICS_LISTEN/metrics"

b "9. the audit trail: every event searchable (docs/SEARCH.md; filled by the worker, off the write path)"
for _ in $(seq 1 100); do
  [ "$(psql -Atc "SELECT (SELECT count(*) FROM observers.search_doc) >= (SELECT count(*) FROM observers.event)")" = t ] && break
  sleep 0.1
done
obs search paid --table orders --since 1h
obs search --field new.customer_id=2
obs search --facet op
echo "from psql: SELECT * FROM observers.search('paid', table_name => 'orders');"
echo

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  b "left running (DEMO_KEEP=1)"
  cat <<EOF
  psql:      psql "$DATABASE_URL"
  receiver:  $RECEIVER_URL  (deliveries in $run/deliveries.jsonl)
  worker:    pid $worker_pid, log $run/worker.log
  stop:      kill $worker_pid $receiver_pid; scripts/pgcluster.sh stop $dir
EOF
else
  b "stopping worker (SIGTERM), receiver and cluster"
fi
