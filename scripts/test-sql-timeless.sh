#!/usr/bin/env bash
# The SQL suite (scripts/test-sql.sh) again, on throwaway clusters whose clock is moved: golden
# files must not depend on the date, the hour or the time zone (docs/TESTING.md, "Timeless").
# libfaketime is preloaded into the server only (psql and pg_regress keep the real clock):
#   * 400 days ahead, server time zone Pacific/Kiritimati (UTC+14: its date is ahead of UTC's);
#   * a leap day crossed into the next month: the tests before 10_notify run at noon UTC on
#     2028-02-29; then the server is restarted at 23:59:58 UTC and the rest of the suite runs
#     from 10_notify on, so midnight passes ~2 s in: inside 10_notify (it lasts ~3 s and sleeps)
#     or, on a machine slow enough that pg_regress needs 2 s to start, before it. Never inside
#     the tests that assert maintain() counts step by step (08, 13, 15, 18), whatever the speed
#     of the machine (a single start at 23:59:56 put midnight wherever the machine's speed put
#     it, and a slower CI machine met it inside one of them: TESTING.md);
#   * 03:00 UTC, where the PST8PDT clients of pg_regress are still on the previous day, with the
#     server in Pacific/Pago_Pago (UTC-11).
# Tests that wait on a PostgreSQL timeout (lock_timeout, statement_timeout) are skipped: its
# timers do not fire under libfaketime (a 50ms lock_timeout waited for the lock instead). They
# are listed in `real_timers` and run on the real clock by scripts/test-sql.sh.
#
#   scripts/test-sql-timeless.sh [tests...]     (needs the extension installed: make install-ext)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1 || true)
[ -n "$lib" ] || { echo "libfaketime not found: apt-get install faketime (scripts/install-deps.sh)" >&2; exit 2; }
# below the ephemeral port range (32768-60999): a client socket cannot be holding it
base_port=${TEST_TIMELESS_PGPORT:-25470}

# clock|server time zone[|test to restart the server at|clock from that test on]
clocks=(
  "+400d|Pacific/Kiritimati"
  "@2028-02-29 12:00:00|UTC|10_notify|@2028-02-29 23:59:58"
  "@2027-07-04 03:00:00|Pacific/Pago_Pago"
)
real_timers=(18_maintain_locks)
if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/^test:[[:space:]]*//' tests/sql/schedule \
                         | grep -vxF -f <(printf '%s\n' "${real_timers[@]}"))
fi
# start the throwaway cluster DIR on PORT with the server's clock at FAKE and time zone ZONE
start_faked() {
  local dir=$1 port=$2 fake=$3 zone=$4
  # without shared_preload_libraries: the main run (scripts/test.sh) preloads pg_observers, these
  # runs cover a server that only did CREATE EXTENSION (event ids from nextval: capture/ids.rs)
  LD_PRELOAD=$lib FAKETIME="$fake" FAKETIME_DONT_FAKE_MONOTONIC=1 \
    PGCLUSTER_PRELOAD=0 PGCLUSTER_FSYNC=off scripts/pgcluster.sh start "$dir" "$port" "timezone=$zone" "observers.verify_tuples=on" >/dev/null
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres \
    psql -X -At -d postgres -c "SELECT 'server clock: ' || now() AT TIME ZONE 'UTC' || ' UTC'"
}
# run tests (arguments) against the cluster on PORT (first argument); results in their own dir
run_tests() {
  local port=$1 tag=$2; shift 2
  [ $# -gt 0 ] || return 0
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres TEST_SQL_OUTDIR="$top/target/regress-timeless-$port$tag" \
    scripts/test-sql.sh "$@"
}

status=0
i=0
for c in "${clocks[@]}"; do
  IFS='|' read -r fake zone split fake2 <<<"$c"
  port=$((base_port + i)); i=$((i + 1))
  dir=/tmp/fraiseql-observers-timeless-$port
  scripts/pgcluster.sh destroy "$dir"
  echo "==> SQL suite with the server's clock at '$fake', time zone $zone${split:+, from $split on at '$fake2'}"
  before=("${tests[@]}"); after=()
  if [ -n "${split:-}" ]; then
    before=(); after=()
    for t in "${tests[@]}"; do
      if [ ${#after[@]} -gt 0 ] || [ "$t" = "$split" ]; then after+=("$t"); else before+=("$t"); fi
    done
  fi
  start_faked "$dir" "$port" "$fake" "$zone"
  run_tests "$port" "" "${before[@]}" || status=1
  if [ ${#after[@]} -gt 0 ]; then
    scripts/pgcluster.sh stop "$dir" >/dev/null
    start_faked "$dir" "$port" "$fake2" "$zone"
    run_tests "$port" "-from-$split" "${after[@]}" || status=1
  fi
  scripts/pgcluster.sh destroy "$dir"
done
exit $status
