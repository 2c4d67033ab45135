#!/usr/bin/env bash
# The whole test suite against real services (called by `make test`, after the extension is
# installed and the binaries are built):
#   1. a throwaway PostgreSQL 15 cluster shared by the suite (tests that restart the database
#      start their own);
#   2. pg_regress golden-file tests of the SQL API (tests/sql), then again on three clusters whose
#      clock is moved days ahead / across midnight UTC / into other time zones (libfaketime);
#   3. cargo test: the extension's pure unit tests (no server needed), then the worker unit tests
#      and the end-to-end tests (real binary, real receiver).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

# below the ephemeral port range (32768-60999): no client socket of this busy machine can hold it
port=${TEST_PGPORT:-25432}
dir=${TEST_PGDATA:-/tmp/fraiseql-observers-test-cluster}
scripts/pgcluster.sh destroy "$dir"          # a test run always starts from a fresh cluster
# observers.verify_tuples: every outbox row capture forms is checked against heap_form_tuple
PGCLUSTER_FSYNC=off scripts/pgcluster.sh start "$dir" "$port" "observers.verify_tuples=on"
keep=${KEEP_CLUSTER:-0}
cleanup() { [ "$keep" = 1 ] || scripts/pgcluster.sh destroy "$dir"; }
trap cleanup EXIT

export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
export OBSERVERS_TEST_PGURL="postgres://postgres@127.0.0.1:$port/postgres"
export FRAISEQL_OBSERVERS_BIN="$top/target/debug/fraiseql-observers"
export WEBHOOK_RECEIVER_BIN="$top/target/debug/webhook-receiver"

echo "==> SQL API tests (pg_regress)"
scripts/test-sql.sh

echo "==> SQL API tests on servers whose clock is moved (timeless golden files)"
scripts/test-sql-timeless.sh

echo "==> extension unit tests (cargo test -p pg_observers --lib: pure code, no server)"
cargo test -p pg_observers --lib

echo "==> unit and end-to-end tests (cargo test)"
cargo test --workspace --exclude pg_observers -- --test-threads="${TEST_THREADS:-4}"
echo "==> all tests passed"
