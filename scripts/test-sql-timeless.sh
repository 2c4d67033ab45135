#!/usr/bin/env bash
# The SQL suite (scripts/test-sql.sh) again, on throwaway clusters whose clock is moved: golden
# files must not depend on the date, the hour or the time zone (docs/TESTING.md, "Timeless").
# libfaketime is preloaded into the server only (psql and pg_regress keep the real clock):
#   * 400 days ahead, server time zone Pacific/Kiritimati (UTC+14: its date is ahead of UTC's);
#   * 23:59:56 UTC on a leap day, so the run crosses midnight UTC (and the month) while it runs,
#     about 4 s in: inside 10_notify on the machines measured (it runs from ~2.2 s to ~6 s), so the
#     point is stable; tests that assert maintain() counts (08, 13, 15, 18) cannot be crossed by
#     a date change mid-test without changing their counts and are kept away from it (TESTING.md);
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

clocks=(
  "+400d|Pacific/Kiritimati"
  "@2028-02-29 23:59:56|UTC"
  "@2027-07-04 03:00:00|Pacific/Pago_Pago"
)
real_timers=(18_maintain_locks)
if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/^test:[[:space:]]*//' tests/sql/schedule \
                         | grep -vxF -f <(printf '%s\n' "${real_timers[@]}"))
fi
status=0
i=0
for c in "${clocks[@]}"; do
  fake=${c%%|*}; zone=${c##*|}
  port=$((base_port + i)); i=$((i + 1))
  dir=/tmp/fraiseql-observers-timeless-$port
  scripts/pgcluster.sh destroy "$dir"
  echo "==> SQL suite with the server's clock at '$fake', time zone $zone"
  LD_PRELOAD=$lib FAKETIME="$fake" FAKETIME_DONT_FAKE_MONOTONIC=1 \
    PGCLUSTER_FSYNC=off scripts/pgcluster.sh start "$dir" "$port" "timezone=$zone" >/dev/null
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres \
    psql -X -At -d postgres -c "SELECT 'server clock: ' || now() AT TIME ZONE 'UTC' || ' UTC'"
  PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres TEST_SQL_OUTDIR="$top/target/regress-timeless-$port" \
    scripts/test-sql.sh "${tests[@]}" || status=1
  scripts/pgcluster.sh destroy "$dir"
done
exit $status
