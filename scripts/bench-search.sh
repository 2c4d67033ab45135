#!/usr/bin/env bash
# The searchable audit trail, measured (docs/BENCHMARKS.md, "Search"). Prints numbers; asserts
# nothing. Uses the cluster of PGHOST/PGPORT/PGUSER (scripts/bench.sh starts one), a database of
# its own (search_bench, dropped first), the release binaries and osmem-server.
#
#   1. indexing throughput: BENCH_SEARCH_EVENTS (default 1,000,000) captured events, indexed by
#      observers.search_index(10000) calls in a loop (what the worker does), events/s;
#   2. search latency at that size: median and p99 of each query of a typical mix (pgbench, one
#      client, BENCH_SEARCH_SECONDS per query, default 15);
#   3. capture cost with the indexer running vs not (pgbench, 1-row INSERT transactions, 4 clients):
#      the capture trigger is the same code either way; what can move is the machine's load;
#   4. the Elasticsearch sink: documents/s into osmem-server (BENCH_ES_EVENTS, default 100,000);
#   5. webhook drain rate of a BENCH_ES_EVENTS backlog with the sink off, on (defaults: it gives
#      way to a backlogged delivery), on without giving way, and (BENCH_ES_OLD_BIN) an older build.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
: "${PGHOST:?set PGHOST/PGPORT/PGUSER (scripts/bench.sh does)}"
export PGUSER=${PGUSER:-postgres}
N=${BENCH_SEARCH_EVENTS:-1000000}
SECS=${BENCH_SEARCH_SECONDS:-15}
ES_N=${BENCH_ES_EVENTS:-100000}
# which parts: pg (1-3), es (4-5), or both (default)
PARTS=${BENCH_SEARCH_PARTS:-pg,es}
bin=$top/target/release
work=$(mktemp -d /tmp/fraiseql-observers-bench-search.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
q() { psql -X -q -At -d search_bench -v ON_ERROR_STOP=1 "$@"; }

if [[ $PARTS == *pg* ]]; then
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS search_bench WITH (FORCE)" -c "CREATE DATABASE search_bench"
q <<'SQL'
CREATE EXTENSION pg_observers;
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id int, status text, total numeric(10,2), note text);
DO $$ BEGIN PERFORM observers.create_observer('orders', 'public.orders', group_name => 'bench'); END $$;
SQL

echo "--- 1. indexing throughput ($N events)"
t=$(now)
for ((lo = 1; lo <= N; lo += 100000)); do
  hi=$((lo + 99999 < N ? lo + 99999 : N))
  q -c "INSERT INTO public.orders
        SELECT g, g % 10000, (ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], (g % 5000) + 0.99,
               (ARRAY['refund requested','gift wrap','express delivery','address changed','invoice sent',
                      'customer called','fraud check','loyalty discount'])[1 + (g * 7) % 8] || ' order ' || g
          FROM generate_series($lo, $hi) AS g"
done
echo "captured $N events in $(since "$t") s (INSERT ... SELECT, 100,000 rows per statement)"
t=$(now)
total=0
while :; do
  n=$(q -c "SELECT observers.search_index(10000)")
  total=$((total + n))
  [ "$n" -eq 0 ] && break
done
el=$(since "$t")
echo "indexed $total events in $el s: $(python3 -c "print(round($total / $el))") events/s (search_index(10000) per call, one session)"
t=$(now)
q -c "SELECT observers.search_add_field('new.customer_id')" >/dev/null
echo "search_add_field('new.customer_id') over $N documents: $(since "$t") s"
q -c "VACUUM ANALYZE observers.search_doc"
echo "search index size: $(q -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'observers.search_doc'::regclass"), outbox: $(q -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'observers.event'::regclass")"

echo "--- 2. search latency at $N indexed events (pgbench, 1 client, ${SECS}s per query; ms)"
declare -A queries=(
  [text_newest_50]="SELECT count(*) FROM observers.search('refund', lim => 50);"
  [text_phrase_table]="SELECT count(*) FROM observers.search('\"express delivery\"', table_name => 'orders', lim => 50);"
  [field_customer]="\\set c random(0, 9999)
SELECT count(*) FROM observers.search(fields => jsonb_build_object('new.customer_id', :c), lim => 50);"
  [field_and_text]="\\set c random(0, 9999)
SELECT count(*) FROM observers.search('refund', fields => jsonb_build_object('new.customer_id', :c), lim => 50);"
  [table_since_1h_page]="SELECT count(*) FROM observers.search(table_name => 'orders', since => now() - interval '1 hour', op => 'INSERT', lim => 50);"
  [rare_word]="\\set g random(1, $N)
SELECT count(*) FROM observers.search('order ' || :g, lim => 50);"
  [facet_op_text]="SELECT count(*) FROM observers.search_facets('op', 'fraud');"
  [timeseries_hour_field]="\\set c random(0, 9999)
SELECT count(*) FROM observers.search_timeseries('hour', fields => jsonb_build_object('new.customer_id', :c));"
)
printf '%-24s %8s %8s %8s %6s\n' query median p99 mean n
for name in text_newest_50 text_phrase_table field_customer field_and_text table_since_1h_page rare_word facet_op_text timeseries_hour_field; do
  printf '%s\n' "${queries[$name]}" > "$work/$name.sql"
  (cd "$work" && pgbench -n -d search_bench -c 1 -T "$SECS" -f "$name.sql" -l --log-prefix="$name" >/dev/null 2>&1)
  cat "$work/$name".* | awk '{print $3 / 1000.0}' | sort -n | awk -v name="$name" '
    { v[NR] = $1; s += $1 }
    END { if (NR == 0) { printf "%-24s (no samples)\n", name; exit }
          m = v[int((NR + 1) / 2)]; p = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
          printf "%-24s %8.2f %8.2f %8.2f %6d\n", name, m, p, s / NR, NR }'
done

echo "--- 3. capture cost with the indexer running vs not (pgbench, INSERT of one row per transaction, 4 clients, 15 s)"
q -c "CREATE TABLE public.captured (id bigserial PRIMARY KEY, customer_id int, note text)"
q -c "SELECT observers.create_observer('captured', 'public.captured', group_name => 'bench')" >/dev/null
echo "INSERT INTO public.captured (customer_id, note) VALUES (42, 'refund requested by phone');" > "$work/ins.sql"
tps() { pgbench -n -d search_bench -c 4 -j 2 -T 15 -f "$work/ins.sql" 2>/dev/null | awk '/^tps/ {print int($3)}'; }
off=$(tps)
( while :; do q -c "SELECT observers.search_index(5000)" >/dev/null; sleep 0.2; done ) &
ipid=$!; pids+=("$ipid")
on=$(tps)
kill "$ipid" 2>/dev/null || true
echo "search indexer off: $off tps; on (search_index(5000) every 200 ms, like the worker): $on tps"

fi

[[ $PARTS == *es* ]] || exit 0
# Side by side in one run, each on a fresh database with the same backlog:
#   off        no sink
#   on         the sink with its defaults (it gives way while delivery is behind: yield_to_delivery 10s)
#   on-eager   the sink with yield_to_delivery: 0s (never waits: what it costs delivery to run beside it)
#   on-old     BENCH_ES_OLD_BIN (a fraiseql-observers built from an earlier commit), if set
# BENCH_ES_ROUNDS (default 1) repeats the whole list, interleaved, against the machine's drift;
# BENCH_ES_INDEX_WAIT=0 stops each run when the webhooks are delivered (drain times only, no
# documents/s; the next run is not disturbed by an osmem-server still indexing).
echo "--- 4./5. Elasticsearch sink into osmem-server and webhook drain with the sink on vs off ($ES_N events)"
osmem=$(python3 -c 'import osmem_server; print(osmem_server.resolve_binary())')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
"$bin/webhook-receiver" --listen "127.0.0.1:$rport" >/dev/null 2>&1 &
pids+=("$!")
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo "?"; }
# CPU seconds of the whole PostgreSQL cluster so far: the postmaster, its finished children
# (cutime/cstime) and its live children
pgdata=$(psql -X -At -d postgres -c "SHOW data_directory")
pg_cpu() {
  local pm; pm=$(head -1 "$pgdata/postmaster.pid")
  { awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
    for c in $(cat "/proc/$pm/task/$pm/children" 2>/dev/null); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
  } | awk -v t="$(getconf CLK_TCK)" '{s += $1} END {printf "%.1f", s / t}'
}
drain() {  # $1: variant -> seconds to drain ES_N webhooks, seconds until osmem-server has them
           # all (sink on), CPU seconds of the worker, of osmem-server and of PostgreSQL
  local variant=$1 db=drain_${1//-/_} es_url="" osport ospid="" wbin="$bin/fraiseql-observers"
  psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  psql -X -q -d "$db" -c "CREATE EXTENSION pg_observers" \
    -c "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id int, note text)"
  local extra=""
  if [ "$variant" != off ]; then
    osport=$(free_port)
    "$osmem" -addr "127.0.0.1:$osport" -no-stdin-watch -parent-pid $$ >/dev/null 2>&1 &
    ospid=$!; pids+=("$ospid")
    es_url="http://127.0.0.1:$osport"
    local y=""
    [ "$variant" = on-eager ] && y=", yield_to_delivery: 0s"
    [ "$variant" = on-old ] && wbin=$BENCH_ES_OLD_BIN
    extra="elasticsearch: { url: \"$es_url\", batch_size: 1000, max_in_flight: 2$y }"
  fi
  cat > "$work/$db.yaml" <<EOF
database: { url: "postgres://$PGUSER@$PGHOST:$PGPORT/$db" }
worker: { id: bench-$variant, group: default, batch_size: 500 }
metrics: disabled
$extra
observers:
  - name: orders
    table: public.orders
    events: [INSERT]
    actions:
      - type: webhook
        url: http://127.0.0.1:$rport/hooks
EOF
  "$wbin" start --config "$work/$db.yaml" >"$work/$db.log" 2>&1 &
  local wpid=$!; pids+=("$wpid")
  for _ in $(seq 1 100); do
    [ "$(psql -X -At -d "$db" -c "SELECT count(*) FROM observers.observer")" = 1 ] && break; sleep 0.1
  done
  kill -STOP "$wpid"   # the backlog first, then the drain
  psql -X -q -d "$db" -c "INSERT INTO public.orders SELECT g, g % 1000, 'refund requested order ' || g FROM generate_series(1, $ES_N) g"
  local t pg0; t=$(now); pg0=$(pg_cpu)
  kill -CONT "$wpid"
  while [ "$(psql -X -At -d "$db" -c "SELECT coalesce(sum(backlog), 0) FROM observers.status()")" != 0 ]; do sleep 0.2; done
  local webhooks; webhooks=$(since "$t")
  local es="" odrain="-"
  [ -n "$ospid" ] && odrain=$(cpu "$ospid")
  if [ "$variant" != off ] && [ "${BENCH_ES_INDEX_WAIT:-1}" != 0 ]; then
    while :; do
      c=$(curl -s -XPOST "$es_url/observer-events-*/_refresh" >/dev/null; curl -s "$es_url/observer-events-*/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0)
      [ "$c" -ge "$ES_N" ] && break; sleep 0.2
    done
    es=$(since "$t")
  fi
  local wcpu ocpu="-" pgc; wcpu=$(cpu "$wpid"); pgc=$(python3 -c "print(f'{$(pg_cpu) - $pg0:.1f}')")
  [ -n "$ospid" ] && ocpu=$(cpu "$ospid")
  kill -TERM "$wpid"; wait "$wpid" 2>/dev/null || true
  [ -n "$ospid" ] && kill "$ospid" 2>/dev/null
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  echo "$webhooks ${es:--} $wcpu $odrain $ocpu $pgc"
}
variants="off on on-eager"
[ -n "${BENCH_ES_OLD_BIN:-}" ] && variants="$variants on-old"
declare -A off_s
printf '%-9s %5s %9s %9s %7s %10s %7s %10s %9s %7s %7s\n' variant round drain_s events/s vs_off indexed_s docs/s worker_cpu os_drain os_cpu pg_cpu
for ((round = 1; round <= ${BENCH_ES_ROUNDS:-1}; round++)); do
  for v in $variants; do
    drain "$v" > "$work/result"   # not in a subshell: its pids reach the cleanup
    read -r w e wc od oc pc < <(tail -1 "$work/result")
    [ "$v" = off ] && off_s[$round]=$w
    echo "$v $round $w ${off_s[$round]}" >> "$work/rows"
    printf '%-9s %5s %9s %9s %7s %10s %7s %10s %9s %7s %7s\n' "$v" "$round" "$w" \
      "$(python3 -c "print(round($ES_N / $w))")" \
      "$(python3 -c "print(f'{$w / ${off_s[$round]}:.2f}x')")" \
      "$e" "$( [ "$e" = - ] && echo - || python3 -c "print(round($ES_N / $e))")" "$wc" "$od" "$oc" "$pc"
  done
done
echo "(drain_s: the webhook backlog of $ES_N events delivered; indexed_s: _count = $ES_N in osmem-server, from the same start; os_drain: CPU seconds of osmem-server until the webhooks were delivered; worker_cpu, os_cpu, pg_cpu: CPU seconds of the worker, osmem-server and PostgreSQL until the end of the run; bulk 1000, 2 in flight, gzip)"
# medians over the rounds
if [ "${BENCH_ES_ROUNDS:-1}" -gt 1 ]; then
  echo "median drain_s over ${BENCH_ES_ROUNDS} rounds, and the median of each round's ratio to that round's sink-off run:"
  python3 - "$work/rows" <<'PY'
import statistics, sys, collections
d = collections.defaultdict(list); r = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v, rnd, w, off = line.split()
    d[v].append(float(w)); r[v].append(float(w) / float(off))
for v in d:
    print(f"  {v:9s} {statistics.median(d[v]):7.2f} s   {statistics.median(r[v]):.2f}x   (ratios: {' '.join(f'{x:.2f}' for x in r[v])})")
PY
fi
