#!/usr/bin/env bash
# The job queue, measured side by side with graphile-worker 0.16 on the same cluster
# (docs/JOBS.md, docs/BENCHMARKS.md section 7). Prints numbers and ratios; asserts nothing.
#
#   1. drain: BENCH_JOBS jobs (default 100,000) enqueued from SQL in one transaction, each
#      POSTing to the local webhook-receiver (answers at once), drained by one worker and then by
#      two workers of one group (job_queue.workers = BENCH_WORKERS slots each, default 64);
#   2. graphile-worker: the same number of jobs (graphile_worker.add_jobs, one transaction), a
#      task that POSTs the payload to the same receiver (scripts/bench-jobs-graphile.js,
#      concurrency BENCH_GW_CONCURRENCY, default 32), same database; its rate and our ratio.
#      Twice: as shipped (every claim and completion commits synchronously), and with
#      synchronous_commit=off on its connections, as our runner's claims and completions commit
#      (docs/JOBS.md): the second ratio is the one that is not about commit settings;
#   3. scaling on I/O-bound jobs: BENCH_JOBS_SLOW jobs (default 20,000) against a receiver that
#      answers after BENCH_SLOW_DELAY (default 50ms), one worker vs two;
#   4. pickup latency on an idle queue (one worker): BENCH_PICKUP jobs (default 300) enqueued
#      one at a time, 20-40 ms apart; enqueue (created_at) -> claim (started_at), p50/p99/max.
#      Twice: the enqueuing transaction committing with synchronous_commit=off (the queue's own
#      path: commit -> NOTIFY -> listener -> claim) and with it on (plus the enqueuer's WAL flush,
#      which a job cannot be seen before; on a busy shared disk that is most of the figure).
#
# Drains are timed from the commit of the enqueuing transaction (the workers are already
# running and idle) until the queue is empty: the same clock for both systems.
#
#   scripts/bench-jobs.sh                              # own throwaway cluster, everything
#   BENCH_JOBS=20000 BENCH_JOBS_PARTS=ours,graphile scripts/bench-jobs.sh
# Env: PGBIN (server binaries, own cluster), BENCH_PGPORT (own cluster's port), BIN (directory
# of fraiseql-observers and webhook-receiver, default target/release), BENCH_JOBS_PARTS (any of
# ours,graphile,slow,pickup; default all). With PGHOST and PGPORT set (scripts/bench.sh does)
# it uses that cluster instead, in a database of its own (jobs_bench, dropped first).
# graphile-worker: `npm install graphile-worker@0.16 pg` into the bench's temp dir (Node 20 is
# installed from Debian when missing); nothing of it is committed or kept.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
n=${BENCH_JOBS:-100000}
slots=${BENCH_WORKERS:-64}
gw_conc=${BENCH_GW_CONCURRENCY:-32}
slow_n=${BENCH_JOBS_SLOW:-20000}
slow_delay=${BENCH_SLOW_DELAY:-50ms}
pickup_n=${BENCH_PICKUP:-300}
parts=${BENCH_JOBS_PARTS:-ours,graphile,slow,pickup}
bin=${BIN:-$top/target/release}
[ -x "$bin/fraiseql-observers" ] && [ -x "$bin/webhook-receiver" ] \
  || { echo "bench-jobs: no $bin/fraiseql-observers or webhook-receiver (make build-release)" >&2; exit 1; }
work=$(mktemp -d /tmp/fraiseql-observers-bench-jobs.XXXXXX)
chmod 755 "$work"
pids=()
own_cluster=
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$own_cluster" ] && scripts/pgcluster.sh destroy "$own_cluster" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${PGHOST:-}" ] || [ -z "${PGPORT:-}" ]; then
  own_cluster=$work/pg
  export PGHOST=127.0.0.1 PGPORT=${BENCH_PGPORT:-$(free_port)}
  scripts/pgcluster.sh start "$own_cluster" "$PGPORT" "shared_buffers=1GB" "max_wal_size=4GB" >/dev/null
fi
export PGUSER=${PGUSER:-postgres} PGDATABASE=jobs_bench
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/jobs_bench"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
# CPU seconds (user + system) a process used so far
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS jobs_bench WITH (FORCE)" -c "CREATE DATABASE jobs_bench"
start_receiver() {  # $1 = delay (0ms: none); sets $port (not a $(...) subshell: the
  local args      # receiver's pid must reach `pids` so that cleanup stops it)
  port=$(free_port)
  args=(--listen "127.0.0.1:$port")
  [ "$1" != 0ms ] && args+=(--delay "$1")
  "$bin/webhook-receiver" "${args[@]}" >"$work/receiver-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
  done
}
start_receiver 0ms
fast=$port
q -c "CREATE EXTENSION pg_observers" -c "CREATE TABLE t (id int)" \
  -c "SELECT observers.create_observer(name => 'jobs', table_name => 't', events => '{INSERT}',
        actions => '[{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$fast/job\",\"timeout\":\"10s\"}]')" >/dev/null
if [[ $parts == *slow* ]]; then
  start_receiver "$slow_delay"
  slow=$port
  q -c "SELECT observers.create_observer(name => 'slow_jobs', table_name => 't', events => '{INSERT}',
          actions => '[{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$slow/job\",\"timeout\":\"10s\"}]')" >/dev/null
fi

config() {  # $1 = worker id
  cat <<YAML
database: { url: "\${DATABASE_URL}" }
worker: { id: $1, group: default }
metrics: disabled
concurrent_execution: { enabled: true, max_in_flight: 1024 }
job_queue: { enabled: true, workers: $slots, poll_interval: 1s }
YAML
}
workers=()
start_workers() {  # $1 = how many; waits until each runner is registered
  workers=()
  for i in $(seq 1 "$1"); do
    config "bench-$1-$i" >"$work/w$i.yaml"
    "$bin/fraiseql-observers" start --config "$work/w$i.yaml" >"$work/worker-$1-$i.log" 2>&1 &
    workers+=($!); pids+=($!)
  done
  for _ in $(seq 1 100); do
    [ "$(q -c "SELECT count(*) FROM observers.job_runner")" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "bench-jobs: workers did not register; logs in $work" >&2; exit 1
}
stop_workers() {
  for p in "${workers[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  q -c "DELETE FROM observers.job_runner" >/dev/null
}
workers_cpu() { local s=0; for p in "${workers[@]}"; do s=$(echo "$s + $(cpu "$p")" | bc); done; echo "$s"; }
wait_empty() {  # $1 = SQL counting what is left
  while [ "$(q -c "$1")" != 0 ]; do sleep 0.05; done
}

declare -A rate
drain() {  # $1 = workers, $2 = observer, $3 = jobs, $4 = label
  local took c0 c1
  q -c "TRUNCATE observers.job_finished" >/dev/null
  start_workers "$1"
  c0=$(workers_cpu)
  q -c "SELECT count(observers.job_enqueue('$2', jsonb_build_object('n', g))) FROM generate_series(1, $3) g" >/dev/null
  local t0; t0=$(now)
  wait_empty "SELECT count(*) FROM observers.job"
  took=$(echo "$(now) - $t0" | bc)
  c1=$(workers_cpu)
  stop_workers
  rate[$4]=$(echo "$3 / $took" | bc -l)
  printf '  %-44s %7d jobs in %6.2f s: %6.0f jobs/s  (worker CPU %.1f s)\n' \
    "$4" "$3" "$took" "${rate[$4]}" "$(echo "$c1 - $c0" | bc)"
}

if [[ $parts == *ours* ]]; then
  echo "drain of $n jobs POSTing to a receiver that answers at once (fraiseql-observers, $slots slots per worker):"
  drain 1 jobs "$n" "1 worker"
  drain 2 jobs "$n" "2 workers"
  printf '  two workers / one: %.2fx\n' "$(echo "${rate[2 workers]} / ${rate[1 worker]}" | bc -l)"
fi

if [[ $parts == *graphile* ]]; then
  if ! command -v node >/dev/null; then
    echo "node not found: installing Debian's nodejs and npm" >&2
    apt-get install -y -qq nodejs npm >/dev/null
  fi
  gw=$work/graphile
  mkdir -p "$gw"
  (cd "$gw" && echo '{"private":true}' >package.json \
     && npm install --silent --no-audit --no-fund graphile-worker@0.16 pg >/dev/null)
  export NODE_PATH=$gw/node_modules RECEIVER_URL="http://127.0.0.1:$fast/job" GW_CONCURRENCY=$gw_conc
  node scripts/bench-jobs-graphile.js migrate
  gwv=$(node -p 'require(process.env.NODE_PATH + "/graphile-worker/package.json").version')
  echo "graphile-worker $gwv (Node $(node --version), concurrency $gw_conc), the same $n jobs, receiver and cluster:"
  gw_drain() {  # $1 = label, $2 = connection string
    DATABASE_URL=$2 node scripts/bench-jobs-graphile.js run >>"$work/graphile.log" 2>&1 &
    local gwpid=$! c0 c1 took t0
    pids+=($gwpid)
    sleep 2
    c0=$(cpu $gwpid)
    q -c "SELECT count(*) FROM graphile_worker.add_jobs(
            (SELECT array_agg(ROW('post', json_build_object('n', g), NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec)
               FROM generate_series(1, $n) g))" >/dev/null
    t0=$(now)
    wait_empty "SELECT count(*) FROM graphile_worker._private_jobs"
    took=$(echo "$(now) - $t0" | bc)
    c1=$(cpu $gwpid)
    kill -TERM $gwpid; wait $gwpid 2>/dev/null || true
    rate[$1]=$(echo "$n / $took" | bc -l)
    printf '  %-44s %7d jobs in %6.2f s: %6.0f jobs/s  (node CPU %.1f s)\n' \
      "$1" "$n" "$took" "${rate[$1]}" "$(echo "$c1 - $c0" | bc)"
    if [ -n "${rate[1 worker]:-}" ]; then
      printf '    ratio, ours / this: one worker %.2fx, two workers %.2fx (target: >= 3x)\n' \
        "$(echo "${rate[1 worker]} / ${rate[$1]}" | bc -l)" "$(echo "${rate[2 workers]} / ${rate[$1]}" | bc -l)"
    fi
  }
  gw_drain "graphile-worker as shipped" "$DATABASE_URL"
  gw_drain "graphile-worker, synchronous_commit=off" "$DATABASE_URL?options=-c%20synchronous_commit%3Doff"
fi

if [[ $parts == *slow* ]]; then
  echo "scaling on I/O-bound jobs: $slow_n jobs, receiver answers after $slow_delay, $slots slots per worker:"
  drain 1 slow_jobs "$slow_n" "1 worker, $slow_delay receiver"
  drain 2 slow_jobs "$slow_n" "2 workers, $slow_delay receiver"
  printf '  two workers / one: %.2fx (target: >= 1.6x)\n' \
    "$(echo "${rate[2 workers, $slow_delay receiver]} / ${rate[1 worker, $slow_delay receiver]}" | bc -l)"
fi

pickup() {  # $1 = synchronous_commit of the enqueuing transactions
  q -c "TRUNCATE observers.job_finished" >/dev/null
  start_workers 1
  sleep 1
  # one session (a fresh connection per job would time the new backend's catalog cache
  # misses, not the queue); each enqueue commits on its own, then 20-40 ms pass
  { echo "SET synchronous_commit = $1;"
    for _ in $(seq 1 "$pickup_n"); do
      echo "SELECT observers.job_enqueue('jobs', '{}');"
      echo "SELECT pg_sleep(0.02 + random() * 0.02);"
    done; } | q >/dev/null
  wait_empty "SELECT count(*) FROM observers.job"
  stop_workers
  q -c "SELECT format('  enqueue with synchronous_commit=%s: %s jobs, p50 %s ms, p99 %s ms, max %s ms',
                '$1', count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
                round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2), round(max(ms)::numeric, 2))
          FROM (SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms FROM observers.job_finished) s"
}
if [[ $parts == *pickup* ]]; then
  echo "pickup latency on an idle queue, one worker, jobs enqueued one at a time (enqueue -> claim; target: p99 < 20 ms):"
  pickup off
  pickup on
fi
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS jobs_bench WITH (FORCE)"
