#!/usr/bin/env bash
# pg_regress golden-file tests of the pg_observers SQL API: tests/sql/sql/*.sql are run with
# psql and their output is compared with tests/sql/expected/*.out.
#
#   scripts/test-sql.sh                 every test of tests/sql/schedule, in order
#   scripts/test-sql.sh 04_capture ...  only these tests
#
# Uses an existing cluster from PGHOST / PGPORT / PGUSER (a superuser) whose PostgreSQL
# installation has pg_observers installed (`make install-ext`) and contrib's dblink (Debian's
# postgresql-15 package ships it). The tests run in a fresh database (TEST_SQL_DB, default
# observers_regress) that is dropped first. Results go to target/regress-$PGPORT (or
# TEST_SQL_OUTDIR); on failure the diff is printed and the exit status is non-zero.
#   TEST_SQL_ACCEPT=1 scripts/test-sql.sh   copy the results over the expected files (then review
#                                          the git diff: that is the point of golden files)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir)
pg_regress=$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress
: "${PGHOST:?set PGHOST/PGPORT/PGUSER to a running cluster (see scripts/pgcluster.sh)}"
: "${PGPORT:?set PGPORT}"
export PGUSER=${PGUSER:-postgres}
db=${TEST_SQL_DB:-observers_regress}
# one output directory per cluster port: runs against different clusters do not clobber each other
out=${TEST_SQL_OUTDIR:-$top/target/regress-$PGPORT}

[ -x "$pg_regress" ] || { echo "pg_regress not found at $pg_regress (apt-get install postgresql-server-dev-15)" >&2; exit 2; }
"$bindir/psql" -X -q -d postgres -v ON_ERROR_STOP=1 \
  -c "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_observers'" -At | grep -q 1 \
  || { echo "pg_observers is not installed in this PostgreSQL installation: run make install-ext" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"
# pg_regress --use-existing neither drops nor creates the database: do it like pg_regress would
"$bindir/psql" -X -q -d postgres -v ON_ERROR_STOP=1 \
  -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
  -c "CREATE DATABASE \"$db\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'" \
  -c "ALTER DATABASE \"$db\" SET lc_messages TO 'C'" \
  -c "ALTER DATABASE \"$db\" SET lc_monetary TO 'C'" \
  -c "ALTER DATABASE \"$db\" SET lc_numeric TO 'C'" \
  -c "ALTER DATABASE \"$db\" SET lc_time TO 'C'" \
  -c "ALTER DATABASE \"$db\" SET bytea_output TO 'hex'" \
  -c "ALTER DATABASE \"$db\" SET timezone_abbreviations TO 'Default'"

if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/^test:[[:space:]]*//' tests/sql/schedule)
fi

status=0
"$pg_regress" --use-existing --host="$PGHOST" --port="$PGPORT" --user="$PGUSER" \
  --bindir="$bindir" --inputdir=tests/sql --outputdir="$out" --dbname="$db" \
  "${tests[@]}" || status=$?

if [ "${TEST_SQL_ACCEPT:-0}" = 1 ]; then
  for t in "${tests[@]}"; do cp "$out/results/$t.out" "tests/sql/expected/$t.out"; done
  echo "accepted results of: ${tests[*]} (review with git diff tests/sql/expected)"
  exit 0
fi
if [ "$status" -ne 0 ]; then
  [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
  echo "pg_regress failed (status $status); results in $out" >&2
  exit "$status"
fi
