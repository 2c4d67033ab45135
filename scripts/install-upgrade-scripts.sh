#!/usr/bin/env bash
# Copy hand-written upgrade scripts (sql/pg_observers--A--B.sql) next to the install script that
# cargo-pgrx generated, so `ALTER EXTENSION pg_observers UPDATE` can find them.
set -euo pipefail
pg_config=${1:-/usr/lib/postgresql/15/bin/pg_config}
top=$(cd "$(dirname "$0")/.." && pwd)
dest="$($pg_config --sharedir)/extension"
shopt -s nullglob
for f in "$top"/sql/pg_observers--*--*.sql; do
  install -m 644 "$f" "$dest/"
  echo "    installed upgrade script $(basename "$f")"
done
