#!/usr/bin/env bash
# What the capture trigger costs per row, in CPU instructions, counted by valgrind's callgrind:
# deterministic (the same run counts the same, whatever else the machine does), unlike pgbench
# ratios, which swing by 1.1x-1.6x between rounds on a shared 2-core machine.
#
#   make bench-capture-instructions          (also section 1b of `make bench`)
#
# One throwaway cluster, one database per variant, each with the same 5-column table `bench`
# (so every statement's text, parse and plan are identical between variants):
#
#   plain      no trigger
#   ours       pg_observers, one observer on INSERT, UPDATE, DELETE, no condition, with
#              shared_preload_libraries = 'pg_observers'
#   ours_nopre the same without the preload (since the fifth round of issue 13 the event id
#              counter lives in shared memory either way; this shows the two cost the same)
#   ours_cond  pg_observers with a condition that every row passes (NEW.total >= 0 for
#              INSERT/UPDATE, OLD.total >= 0 for DELETE): what a condition costs
#   pgq        PgQ 3.5's C trigger pgq.jsontriga (Debian postgresql-15-pgq3) into a PgQ queue
#   hasura     (only with BENCH_INSTR_VARIANTS) a Hasura-style PL/pgSQL row trigger:
#              json_build_object('old', row_to_json(OLD), 'new', row_to_json(NEW)) into an event
#              log with a uuid key
#
# Workloads: 1-row INSERT transactions, 100-row INSERT statements, 1-row UPDATE transactions by
# primary key (on a preloaded table), 1-row DELETE transactions by primary key. Each statement is
# its own transaction. For each (workload, variant) the prepared cluster is copied and
# `postgres --single -c fsync=off DB < script` runs under callgrind twice, with N and 2N
# statements; (instructions(2N) - instructions(N)) / (N * rows per statement) is the marginal
# cost of one row, with start-up, catalog cache warm-up, loading the libraries and preparing the
# capture plans cancelled out. "adds" = variant - plain. WAL bytes per row come from
# pg_current_wal_lsn() before and after the statements, the same way.
# The wake-up NOTIFY is left out (observers.notify_interval = 1h: only the first transaction of a
# run notifies, and the difference cancels it): under valgrind every transaction takes longer
# than the default 10ms interval, so each would notify, which no real backend does (at most one
# notification per backend per interval; its cost shows in the pgbench section). Counting it would
# also make the count depend on the machine's speed.
#
# Environment: PG_CONFIG (default the system PostgreSQL 15), BENCH_INSTR_N (statements of the
# shorter run, default 1000; the 100-row workload uses N/10), BENCH_INSTR_VARIANTS (default
# "plain ours ours_nopre ours_cond pgq"), BENCH_INSTR_WORKLOADS (default "insert1 insert100 update1
# delete1"), BENCH_INSTR_PGPORT (port of the preparation server, default 25436),
# BENCH_INSTR_KEEP=DIR keeps the callgrind files there (profile them with
# `callgrind_annotate --inclusive=yes FILE`).
# Installs what it needs first, idempotently: Debian valgrind and postgresql-15-pgq3 (and, when
# PG_CONFIG is a private copy of PostgreSQL, copies PgQ's files into it). pg_observers itself must
# be installed (make install-ext).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir)
pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)
n=${BENCH_INSTR_N:-1000}
variants=(${BENCH_INSTR_VARIANTS:-plain ours ours_nopre ours_cond pgq})
workloads=(${BENCH_INSTR_WORKLOADS:-insert1 insert100 update1 delete1})
port=${BENCH_INSTR_PGPORT:-25436}
keep=${BENCH_INSTR_KEEP:-}
say() { printf '==> %s\n' "$*" >&2; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- what this needs -------------------------------------------------------------------------
missing=()
for p in valgrind postgresql-15-pgq3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# PgQ's files go where the system PostgreSQL has them; a private copy of the installation (another
# PG_CONFIG) gets them copied in, under the same relative paths.
if [ ! -f "$pkglibdir/pgq_triggers.so" ] || [ ! -f "$sharedir/extension/pgq.control" ]; then
  say "copying PgQ (postgresql-15-pgq3) into $pkglibdir and $sharedir/extension"
  while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
      /usr/lib/postgresql/15/lib/*) dest=$pkglibdir/${f#/usr/lib/postgresql/15/lib/} ;;
      /usr/share/postgresql/15/*) dest=$sharedir/${f#/usr/share/postgresql/15/} ;;
      *) continue ;;
    esac
    mkdir -p "$(dirname "$dest")"
    cp -p "$f" "$dest"
  done < <(dpkg -L postgresql-15-pgq3)
fi
so="$pkglibdir/pg_observers.so"
if [ ! -f "$so" ]; then
  echo "pg_observers is not installed ($so missing): run make install-ext" >&2
  exit 2
fi
if readelf -S "$so" 2>/dev/null | grep -q '\.debug_info'; then
  build="DEBUG build (has debug info) -- numbers are NOT representative; install with --release"
else
  build="release build"
fi

# --- the prepared cluster ---------------------------------------------------------------------
work=$(mktemp -d /tmp/fraiseql-observers-instr.XXXXXX)
chmod 755 "$work"
template=$work/template
cleanup() {
  PGBIN=$bindir scripts/pgcluster.sh destroy "$template" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work"

# Rows already there, as in production: `bench` holds 200,000 rows (at least 2N, for 2N UPDATEs
# and DELETEs by key), and every event store holds 200,000 events (pg_observers' outbox, PgQ's
# queue, the Hasura-style log). From about 150,000 entries on, a btree on an ascending key has
# two levels and PostgreSQL inserts at its rightmost leaf without descending from the root (its
# "fastpath"): that is what an outbox partition with a few events per second, or a busy table,
# looks like for most of a day. (In a fresh, small index every insert descends: about 3,000
# instructions more per row, for the table's primary key and for the outbox alike.)
preload=$((2 * n > 200000 ? 2 * n : 200000))
backlog=200000
PGCLUSTER_PRELOAD=0 PGBIN=$bindir scripts/pgcluster.sh start "$template" "$port" >/dev/null
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)
for v in "${variants[@]}"; do
  "${psql[@]}" -d postgres -c "CREATE DATABASE $v"
  "${psql[@]}" -d "$v" >/dev/null <<SQL
CREATE TABLE bench (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id int, total numeric(10,2), status text, created_at timestamptz DEFAULT now());
INSERT INTO bench (customer_id, total, status) SELECT g, g * 1.5, 'new' FROM generate_series(1, $preload) AS g;
VACUUM ANALYZE bench;
SQL
  case "$v" in
    plain) ;;
    ours|ours_nopre)
      "${psql[@]}" -d "$v" >/dev/null <<SQL
CREATE EXTENSION pg_observers;
SELECT observers.create_observer('bench', 'bench', '{INSERT,UPDATE,DELETE}');
INSERT INTO observers.event (observer_id, op, new) SELECT 1, 'INSERT', '{}' FROM generate_series(1, $backlog);
SQL
      ;;
    ours_cond)
      "${psql[@]}" -d "$v" >/dev/null <<SQL
CREATE EXTENSION pg_observers;
SELECT observers.create_observer('bench_new', 'bench', '{INSERT,UPDATE}', condition => 'NEW.total >= 0');
SELECT observers.create_observer('bench_old', 'bench', '{DELETE}', condition => 'OLD.total >= 0');
INSERT INTO observers.event (observer_id, op, new) SELECT 1, 'INSERT', '{}' FROM generate_series(1, $backlog);
SQL
      ;;
    pgq)
      "${psql[@]}" -d "$v" >/dev/null <<SQL
CREATE EXTENSION pgq;
SELECT pgq.create_queue('bench');
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON bench
    FOR EACH ROW EXECUTE FUNCTION pgq.jsontriga('bench');
SELECT count(pgq.insert_event('bench', 'I:id', '{}')) FROM generate_series(1, $backlog);
SQL
      ;;
    hasura)
      "${psql[@]}" -d "$v" >/dev/null <<SQL
CREATE TABLE event_log (
    id uuid DEFAULT gen_random_uuid() PRIMARY KEY,
    schema_name text NOT NULL, table_name text NOT NULL, trigger_name text NOT NULL,
    payload jsonb NOT NULL, delivered boolean NOT NULL DEFAULT false,
    error boolean NOT NULL DEFAULT false, tries int NOT NULL DEFAULT 0,
    created_at timestamp DEFAULT now(), locked timestamptz, next_retry_at timestamp,
    archived boolean NOT NULL DEFAULT false);
CREATE INDEX event_log_fetch ON event_log (locked NULLS FIRST, next_retry_at NULLS FIRST, created_at)
    WHERE delivered = false AND error = false AND archived = false;
CREATE FUNCTION notify_bench() RETURNS trigger LANGUAGE plpgsql AS \$\$
DECLARE
    payload json;
BEGIN
    payload := json_build_object('op', TG_OP,
        'data', json_build_object('old', CASE WHEN TG_OP <> 'INSERT' THEN row_to_json(OLD) END,
                                  'new', CASE WHEN TG_OP <> 'DELETE' THEN row_to_json(NEW) END),
        'session_variables', current_setting('hasura.user', true));
    INSERT INTO event_log (schema_name, table_name, trigger_name, payload)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'bench', payload);
    RETURN NULL;
END \$\$;
CREATE TRIGGER notify_bench AFTER INSERT OR UPDATE OR DELETE ON bench
    FOR EACH ROW EXECUTE FUNCTION notify_bench();
INSERT INTO event_log (schema_name, table_name, trigger_name, payload)
SELECT 'public', 'bench', 'bench', '{}' FROM generate_series(1, $backlog);
SQL
      ;;
    *) echo "unknown variant $v (plain ours ours_cond pgq hasura)" >&2; exit 2 ;;
  esac
  "${psql[@]}" -d "$v" -c "VACUUM ANALYZE"
done
"${psql[@]}" -d postgres -c CHECKPOINT
PGBIN=$bindir scripts/pgcluster.sh stop "$template" >/dev/null

# --- the workloads ----------------------------------------------------------------------------
rows_per_stmt() { if [ "$1" = insert100 ]; then echo 100; else echo 1; fi; }
stmts_of() { if [ "$1" = insert100 ]; then echo $((n / 10)); else echo "$n"; fi; }
# script WORKLOAD COUNT: COUNT statements between two pg_current_wal_lsn() read-outs
script() {
  local w=$1 count=$2
  echo "SELECT pg_current_wal_lsn()"
  case "$w" in
    insert1) seq 1 "$count" | awk '{printf "INSERT INTO bench (customer_id, total, status) VALUES (%d, %d * 1.5, '"'"'new'"'"')\n", $1, $1}' ;;
    insert100) for _ in $(seq 1 "$count"); do
                 echo "INSERT INTO bench (customer_id, total, status) SELECT g, g * 1.5, 'new' FROM generate_series(1, 100) AS g"
               done ;;
    update1) seq 1 "$count" | awk '{printf "UPDATE bench SET total = total + 1, status = '"'"'paid'"'"' WHERE id = %d\n", $1}' ;;
    delete1) seq 1 "$count" | awk '{printf "DELETE FROM bench WHERE id = %d\n", $1}' ;;
    *) echo "unknown workload $w (insert1 insert100 update1 delete1)" >&2; exit 2 ;;
  esac
  echo "SELECT pg_current_wal_lsn()"
}
lsn_bytes() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) + 16#$lo )); }

# measure WORKLOAD VARIANT COUNT -> "instructions wal_bytes"
measure() {
  local w=$1 v=$2 count=$3 data=$work/data out=$work/cg.out
  rm -rf "$data"
  cp -a "$template" "$data"
  rm -f "$data/postmaster.pid"
  script "$w" "$count" >"$work/script.sql"
  chmod 644 "$work/script.sql"
  rm -f "$out"
  # pg_observers' variants run with the library preloaded, except ours_nopre; the others
  # without it
  local preload=()
  case "$v" in ours_nopre) ;; ours*) preload=(-c shared_preload_libraries=pg_observers) ;; esac
  as_pg valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bindir/postgres" --single -D "$data" -c fsync=off -c jit=off -c max_wal_size=10GB \
    -c observers.notify_interval=3600000 "${preload[@]}" \
    -c log_min_messages=warning "$v" <"$work/script.sql" >"$work/single.out" 2>"$work/valgrind.err" \
    || { tail -20 "$work/valgrind.err" "$work/single.out" >&2; exit 1; }
  if grep -q "ERROR:" "$work/single.out" "$work/valgrind.err"; then
    grep -m3 "ERROR:" "$work/single.out" "$work/valgrind.err" >&2
    exit 1
  fi
  [ -n "$keep" ] && { mkdir -p "$keep"; cp "$out" "$keep/callgrind.$w.$v.$count"; }
  local ir lsns
  ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out")
  [ -n "$ir" ] || ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out")
  mapfile -t lsns < <(sed -n 's/.*pg_current_wal_lsn = "\([0-9A-F]*\/[0-9A-F]*\)".*/\1/p' "$work/single.out")
  if [ -z "$ir" ] || [ "${#lsns[@]}" -ne 2 ]; then
    echo "could not read the counts of $w/$v:" >&2
    tail -5 "$work/single.out" >&2
    exit 1
  fi
  echo "$ir $(( $(lsn_bytes "${lsns[1]}") - $(lsn_bytes "${lsns[0]}") ))"
}

echo "pg_observers capture cost in instructions: $("$bindir/postgres" --version)"
echo "installed $so: $build"
echo "callgrind, postgres --single -c fsync=off; marginal cost of one row between runs of N and 2N statements (N = $n; 100-row: $((n / 10)))"
echo

declare -A ir wal
for w in "${workloads[@]}"; do
  c=$(stmts_of "$w")
  rows=$(( c * $(rows_per_stmt "$w") ))
  for v in "${variants[@]}"; do
    r1=$(measure "$w" "$v" "$c")
    r2=$(measure "$w" "$v" $((2 * c)))
    read -r i1 w1 <<<"$r1"
    read -r i2 w2 <<<"$r2"
    ir[$w,$v]=$(( (i2 - i1) / rows ))
    wal[$w,$v]=$(( (w2 - w1) / rows ))
    printf '  %-10s %-10s %10d instr/row %6d WAL B/row\n' "$w" "$v" "${ir[$w,$v]}" "${wal[$w,$v]}" >&2
  done
done

title() {
  case "$1" in
    insert1) echo "1-row INSERT transactions" ;;
    insert100) echo "100-row INSERT statements" ;;
    update1) echo "1-row UPDATE transactions" ;;
    delete1) echo "1-row DELETE transactions" ;;
  esac
}
label() {
  case "$1" in
    ours) echo "ours adds" ;;
    ours_nopre) echo "ours, not preloaded, adds" ;;
    ours_cond) echo "ours+condition adds" ;;
    pgq) echo "PgQ jsontriga adds" ;;
    hasura) echo "Hasura-style PL/pgSQL adds" ;;
    *) echo "$1 adds" ;;
  esac
}
echo
echo "Instructions per row (callgrind); 'adds' = variant - plain"
hdr="| workload | plain (instr/row) |"
sep="|---|---|"
for v in "${variants[@]}"; do [ "$v" = plain ] || { hdr+=" $(label "$v") |"; sep+="---|"; }; done
echo "$hdr"; echo "$sep"
for w in "${workloads[@]}"; do
  line="| $(title "$w") | $(printf "%'d" "${ir[$w,plain]}") |"
  for v in "${variants[@]}"; do
    [ "$v" = plain ] || line+=" +$(printf "%'d" $(( ir[$w,$v] - ir[$w,plain] ))) |"
  done
  echo "$line"
done
echo
echo "WAL bytes per row (pg_current_wal_lsn deltas)"
hdr="| workload |"; sep="|---|"
for v in "${variants[@]}"; do hdr+=" $v |"; sep+="---|"; done
echo "$hdr"; echo "$sep"
for w in "${workloads[@]}"; do
  line="| $(title "$w") |"
  for v in "${variants[@]}"; do line+=" ${wal[$w,$v]} |"; done
  echo "$line"
done
