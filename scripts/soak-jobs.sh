#!/usr/bin/env bash
# Soak of the job queue (issue 11, docs/BENCHMARKS.md section 7): jobs enqueued at a steady rate
# for a long time, run by one worker against the local webhook-receiver, while the sizes of the
# job tables are sampled. What it shows: `observers.job` (unfinished jobs: every finished job
# leaves it by DELETE) stays flat, heap and indexes, because autovacuum keeps up with a queue that
# never holds more than a few seconds of work; `observers.job_finished` (the history) grows
# linearly until `job_maintain()` drops its day partitions after the retention. Prints a table
# and the first vs last quarter; asserts nothing.
#
#   scripts/soak-jobs.sh                          # 1 hour at 200 jobs/s, a sample a minute
#   SOAK_DURATION=600 SOAK_RATE=500 SOAK_SAMPLE=30 scripts/soak-jobs.sh
# Env: PGBIN (server binaries), BIN (directory of fraiseql-observers and webhook-receiver;
# default target/release, else target/debug), SOAK_DURATION (s), SOAK_RATE (jobs/s),
# SOAK_SAMPLE (s between samples), SOAK_CSV (also write the samples there).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
duration=${SOAK_DURATION:-3600}
rate=${SOAK_RATE:-200}
every=${SOAK_SAMPLE:-60}
bin=${BIN:-}
if [ -z "$bin" ]; then
  bin=$top/target/release
  [ -x "$bin/fraiseql-observers" ] || bin=$top/target/debug
fi
[ -x "$bin/fraiseql-observers" ] && [ -x "$bin/webhook-receiver" ] \
  || { echo "soak-jobs: no $bin/fraiseql-observers or webhook-receiver (make build)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/fraiseql-observers-soak-jobs.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pgcluster.sh destroy "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

export PGHOST=127.0.0.1 PGPORT=${SOAK_PGPORT:-$(free_port)} PGUSER=postgres PGDATABASE=postgres
# autovacuum as shipped (the point is what a default cluster does), fsync on
scripts/pgcluster.sh start "$work/pg" "$PGPORT" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

port=$(free_port)
"$bin/webhook-receiver" --listen "127.0.0.1:$port" >"$work/receiver.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
q -c "CREATE EXTENSION pg_observers" -c "CREATE TABLE t (id int)" \
  -c "SELECT observers.create_observer(name => 'soak', table_name => 't', events => '{INSERT}',
        actions => '[{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$port/job\",\"timeout\":\"10s\"}]')" >/dev/null
cat >"$work/w.yaml" <<YAML
database: { url: "\${DATABASE_URL}" }
worker: { id: soak, group: default }
metrics: disabled
job_queue: { enabled: true, workers: 32 }
YAML
"$bin/fraiseql-observers" start --config "$work/w.yaml" >"$work/worker.log" 2>&1 &
pids+=($!)

# the enqueuer: `rate` jobs a second, one transaction each second, from one session
(
  end=$((SECONDS + duration))
  while [ "$SECONDS" -lt "$end" ]; do
    echo "SELECT count(observers.job_enqueue('soak', jsonb_build_object('n', g))) FROM generate_series(1, $rate) g;"
    sleep 1
  done
) | psql -X -q -At -v ON_ERROR_STOP=1 >/dev/null &
enq=$!
pids+=($enq)

sample_sql="SELECT round(extract(epoch FROM now() - pg_postmaster_start_time()))::int,
  (SELECT count(*) FROM observers.job),
  pg_relation_size('observers.job') / 1024,
  pg_indexes_size('observers.job') / 1024,
  (SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = 'observers.job'::regclass),
  (SELECT (coalesce(sum(pg_total_relation_size(inhrelid)), 0) / 1024)::bigint FROM pg_inherits
    WHERE inhparent = 'observers.job_finished'::regclass),
  (SELECT count(*) FROM observers.job_finished),
  (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'observers.job'::regclass)"
echo "soak: $rate jobs/s for ${duration}s, one worker (32 slots), a sample every ${every}s ($bin)"
printf '%8s %10s %12s %14s %10s %18s %14s %11s\n' uptime_s unfinished job_heap_kB job_indexes_kB dead_tup finished_total_kB finished_jobs autovacuums
samples=()
end=$((SECONDS + duration))
while [ "$SECONDS" -lt "$end" ]; do
  sleep "$every"
  row=$(q -F ' ' -c "$sample_sql")
  samples+=("$row")
  # shellcheck disable=SC2086
  printf '%8s %10s %12s %14s %10s %18s %14s %11s\n' $row
  [ -n "${SOAK_CSV:-}" ] && echo "$row" | tr ' ' ',' >>"$SOAK_CSV"
done
wait "$enq" 2>/dev/null || true
done_jobs=$(q -c "SELECT count(*) FROM observers.job_finished WHERE state = 'completed'")
left=$(q -c "SELECT count(*) FROM observers.job")
echo "enqueued about $((rate * duration)), completed $done_jobs, unfinished at the end $left"
n=${#samples[@]}
if [ "$n" -ge 4 ]; then
  quarter=$((n / 4))
  avg() {  # $1 = column (1-based), $2 = from, $3 = to (exclusive)
    local s=0 c=0 i
    for ((i = $2; i < $3; i++)); do s=$((s + $(echo "${samples[$i]}" | cut -d' ' -f"$1"))); c=$((c + 1)); done
    echo $((s / c))
  }
  echo "first quarter vs last quarter of the samples (average):"
  printf '  observers.job heap      %8s kB -> %8s kB\n' "$(avg 3 0 "$quarter")" "$(avg 3 $((n - quarter)) "$n")"
  printf '  observers.job indexes   %8s kB -> %8s kB\n' "$(avg 4 0 "$quarter")" "$(avg 4 $((n - quarter)) "$n")"
  printf '  observers.job_finished  %8s kB -> %8s kB (history: grows until its retention)\n' \
    "$(avg 6 0 "$quarter")" "$(avg 6 $((n - quarter)) "$n")"
fi
