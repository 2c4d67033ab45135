#!/usr/bin/env bash
# `make bench`: performance, measured side by side in one run on one throwaway cluster
# (fsync and synchronous_commit on, as in production). Nothing here asserts a threshold: it prints
# numbers and ratios against the baselines in the same run.
#   1. capture overhead (scripts/bench-capture.sh, pgbench): plain table vs observed by us vs the
#      usual PL/pgSQL row trigger, 1-row transactions x 8 clients and 100-row statements.
#   1b. capture cost in CPU instructions per row (scripts/bench-capture-instructions.sh, callgrind
#      on a cluster of its own; deterministic): plain vs ours vs PgQ's jsontriga, for INSERT
#      (1-row and 100-row statements), UPDATE and DELETE; `make bench-capture-instructions` alone.
#   2. end to end (target/release/bench-e2e): drain rate of a 100,000-event backlog delivered as
#      webhooks to a local receiver, and commit-to-delivery latency at a steady 1,000 events/s.
#   3. resilience (target/release/bench-resilience): drain rate with deduplication off / redis /
#      postgres, and one destination's drain rate while another is healthy vs down (breaker open).
#   4. lookups (target/release/bench-lookups): lookup latency against a 50 ms HTTP source,
#      uncached vs Redis hit vs memory hit, p50/p99.
#   5. failover (target/release/bench-failover): three workers of a group, 12 kill -9s and 3
#      SIGTERMs of the leader while events stream: handover and delivery gap, median and worst.
#   6. the searchable audit trail (scripts/bench-search.sh): indexing throughput and search
#      latency at 1M events, capture with the indexer on vs off, the Elasticsearch sink into
#      osmem-server and the webhook drain with the sink on vs off.
#   7. the job queue (scripts/bench-jobs.sh): drain of 100,000 jobs POSTing to the local receiver
#      with one and two workers, side by side with graphile-worker 0.16 on the same cluster (as
#      shipped and with synchronous_commit=off), two-worker scaling against a 50 ms receiver, and
#      pickup latency on an idle queue. BENCH_JOBS makes it smaller.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
port=${BENCH_PGPORT:-25434}
dir=/tmp/fraiseql-observers-bench
scripts/pgcluster.sh destroy "$dir"
scripts/pgcluster.sh start "$dir" "$port" "shared_buffers=1GB" "max_wal_size=4GB" "checkpoint_timeout=30min"
trap 'scripts/pgcluster.sh destroy "$dir"' EXIT
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

echo; echo "=== 1. capture overhead ==="
scripts/bench-capture.sh

echo; echo "=== 1b. capture cost in instructions (callgrind) ==="
scripts/bench-capture-instructions.sh

echo; echo "=== 2. end to end ==="
"$top/target/release/bench-e2e" --pgurl "postgres://postgres@127.0.0.1:$port/postgres" \
  --worker-bin "$top/target/release/fraiseql-observers" "$@"

echo; echo "=== 3. resilience ==="
"$top/target/release/bench-resilience" --pgurl "postgres://postgres@127.0.0.1:$port/postgres" \
  --worker-bin "$top/target/release/fraiseql-observers"

echo; echo "=== 4. lookup latency (uncached vs redis hit vs memory hit, 50 ms source) ==="
"$top/target/release/bench-lookups"

echo; echo "=== 5. failover (handover and delivery gap after kill -9 / SIGTERM of the leader) ==="
"$top/target/release/bench-failover" --pgurl "postgres://postgres@127.0.0.1:$port/postgres" \
  --worker-bin "$top/target/release/fraiseql-observers"

echo; echo "=== 6. the searchable audit trail (PostgreSQL search, the Elasticsearch sink) ==="
scripts/bench-search.sh

echo; echo "=== 7. the job queue (drain vs graphile-worker 0.16, two-worker scaling, pickup latency) ==="
scripts/bench-jobs.sh
