#!/usr/bin/env bash
# Job queue drain rate (docs/JOBS.md, docs/BENCHMARKS.md): N jobs enqueued from SQL in one
# transaction, each POSTing to the local webhook receiver, drained by one worker and then by two
# workers of one group; and pickup latency (enqueue -> claim) on an idle queue, from
# observer_job_wait_seconds... measured here as created_at -> started_at of single jobs.
#
#   scripts/bench-jobs.sh                       # N=20000, receiver answers at once
#   BENCH_JOBS=100000 BENCH_DELAY=50ms scripts/bench-jobs.sh
# Env: PGBIN (server binaries), BENCH_PGPORT, BENCH_JOBS, BENCH_DELAY (receiver --delay),
# BENCH_WORKERS (job_queue.workers per worker, default 64), BIN (target/release or target/debug).
# No graphile-worker comparison yet (docs/BENCHMARKS.md says so).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${BENCH_PGPORT:-$(free_port)}
rport=$(free_port)
n=${BENCH_JOBS:-20000}
slots=${BENCH_WORKERS:-64}
delay=${BENCH_DELAY:-0ms}
bin=${BIN:-$top/target/release}
[ -x "$bin/fraiseql-observers" ] || bin=$top/target/debug
dir=/tmp/fraiseql-observers-bench-jobs
run=$top/.run/bench-jobs
mkdir -p "$run"
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=bench
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/bench"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; scripts/pgcluster.sh stop "$dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT

scripts/pgcluster.sh destroy "$dir" >/dev/null 2>&1 || true
scripts/pgcluster.sh start "$dir" "$port" >/dev/null
psql -q -d postgres -c "CREATE DATABASE bench"
psql -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION pg_observers" \
  -c "CREATE TABLE t (id int)" \
  -c "SELECT observers.create_observer(name => 'jobs', table_name => 't', events => '{INSERT}',
        actions => '[{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$rport/job\",\"timeout\":\"10s\"}]')" >/dev/null
args=(--listen "127.0.0.1:$rport")
[ "$delay" != 0ms ] && args+=(--delay "$delay")
"$bin/webhook-receiver" "${args[@]}" >"$run/receiver.log" 2>&1 &
pids+=($!)

config() {
  cat <<YAML
database: { url: "\${DATABASE_URL}" }
worker: { id: $1, group: default }
metrics: disabled
concurrent_execution: { enabled: true, max_in_flight: 256 }
job_queue: { enabled: true, workers: $slots, poll_interval: 1s }
YAML
}

drain() {  # $1 = number of workers
  local w=$1 started
  psql -q -c "TRUNCATE observers.job_finished" 
  psql -q -c "SELECT count(observers.job_enqueue('jobs', jsonb_build_object('n', g))) FROM generate_series(1, $n) g" >/dev/null
  local wp=()
  started=$(date +%s.%N)
  for i in $(seq 1 "$w"); do
    config "bench-$w-$i" >"$run/w$i.yaml"
    "$bin/fraiseql-observers" start --config "$run/w$i.yaml" >"$run/worker-$w-$i.log" 2>&1 &
    wp+=($!); pids+=($!)
  done
  while [ "$(psql -Atc "SELECT count(*) FROM observers.job")" != 0 ]; do sleep 0.2; done
  local took
  took=$(echo "$(date +%s.%N) - $started" | bc)
  for p in "${wp[@]}"; do kill -TERM "$p"; wait "$p" || true; done
  printf 'drain %d jobs, %d worker(s) x %d slots, receiver delay %s: %.1f s, %.0f jobs/s (includes worker start-up)\n' \
    "$n" "$w" "$slots" "$delay" "$took" "$(echo "$n / $took" | bc -l)"
}

drain 1
drain 2

# pickup latency on an idle queue: one worker, jobs enqueued one at a time
config bench-idle >"$run/idle.yaml"
"$bin/fraiseql-observers" start --config "$run/idle.yaml" >"$run/worker-idle.log" 2>&1 &
pids+=($!)
sleep 2
psql -q -c "TRUNCATE observers.job_finished"
for _ in $(seq 1 200); do psql -qAtc "SELECT observers.job_enqueue('jobs', '{}')" >/dev/null; sleep 0.02; done
sleep 2
psql -Atc "SELECT format('pickup latency (enqueue commit -> claim), 200 idle jobs: p50 %s ms, p99 %s ms, max %s ms',
                round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1))
             FROM (SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms FROM observers.job_finished) s"
