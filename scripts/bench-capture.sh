#!/usr/bin/env bash
# Capture overhead of pg_observers on the users' write path, measured side by side in ONE run
# with pgbench against an existing cluster (PGHOST / PGPORT / PGUSER, a superuser):
#
#   plain        a 5-column table, no trigger
#   observed     the same table observed by pg_observers (one observer, INSERT, no condition,
#                default observers.notify_interval = 10ms)
#   plpgsql      the usual PL/pgSQL AFTER ROW trigger: INSERT INTO ev(payload) VALUES (row_to_json(NEW))
#   pgq          PgQ 3.5's C capture trigger pgq.jsontriga into a PgQ queue (Debian postgresql-15-pgq3,
#                installed if missing, as scripts/bench-capture-instructions.sh does)
#   and, for 1-row transactions, the wake-up variants:
#   observed_nonotify     observers.notify_interval = 0 (no NOTIFY at all)
#   observed_notify_each  observers.notify_interval = 0 plus a pg_notify() in every transaction
#                         (what a naive capture trigger does)
#
# Workloads: 1-row INSERT transactions with BENCH_CLIENTS_1 (8) clients, 100-row INSERT
# statements with BENCH_CLIENTS_100 (4) clients, and 1-row UPDATE and DELETE transactions by
# primary key with BENCH_CLIENTS_1 clients on tables preloaded with BENCH_ROWS (200,000) rows
# (random keys: a DELETE may find its row already deleted), BENCH_SECONDS (10) per run,
# BENCH_ROUNDS (5) rounds; the variants alternate inside each round to spread the machine's
# noise evenly, in an order rotated every round; BENCH_VARIANTS limits the variants run. Every run starts from emptied (and, for UPDATE/DELETE, preloaded) tables after a
# CHECKPOINT. Observers capture INSERT, UPDATE and DELETE. Prints tps per run, and per variant the
# median over rounds of the ratio plain/variant measured within the same round (1.00 = no
# overhead). Nothing here asserts a threshold.
#
# The extension must be installed with optimisations for meaningful numbers:
#   cargo pgrx install --release -p pg_observers --pg-config "$(which pg_config)"   (make install-ext)
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir)
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1)
pgbench=$bindir/pgbench
: "${PGHOST:?set PGHOST/PGPORT/PGUSER to a running cluster (see scripts/pgcluster.sh)}"
: "${PGPORT:?set PGPORT}"
export PGUSER=${PGUSER:-postgres}
db=${BENCH_DB:-observers_bench}
seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-5}
rows=${BENCH_ROWS:-200000}
clients1=${BENCH_CLIENTS_1:-8}
clients100=${BENCH_CLIENTS_100:-4}
threads=${BENCH_THREADS:-2}
work=$(mktemp -d /tmp/bench-capture.XXXXXX)
trap 'rm -rf "$work"' EXIT

so="$("$PG_CONFIG" --pkglibdir)/pg_observers.so"
if [ ! -f "$so" ]; then
  echo "pg_observers is not installed ($so missing): run make install-ext" >&2
  exit 2
fi
if readelf -S "$so" 2>/dev/null | grep -q '\.debug_info'; then
  build="DEBUG build (has debug info) -- numbers are NOT representative; install with --release"
else
  build="release build (no debug info)"
fi

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! dpkg-query -W -f='${Status}' postgresql-15-pgq3 2>/dev/null | grep -q "install ok installed"; then
  echo "==> installing Debian package postgresql-15-pgq3 (PgQ, the peer)" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgq3 >/dev/null
fi
pkglibdir=$("$PG_CONFIG" --pkglibdir) sharedir=$("$PG_CONFIG" --sharedir)
if [ ! -f "$pkglibdir/pgq_triggers.so" ] || [ ! -f "$sharedir/extension/pgq.control" ]; then
  # a private copy of the PostgreSQL installation (another PG_CONFIG): copy PgQ's files in
  while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
      /usr/lib/postgresql/15/lib/*) dest=$pkglibdir/${f#/usr/lib/postgresql/15/lib/} ;;
      /usr/share/postgresql/15/*) dest=$sharedir/${f#/usr/share/postgresql/15/} ;;
      *) continue ;;
    esac
    mkdir -p "$(dirname "$dest")"; cp -p "$f" "$dest"
  done < <(dpkg -L postgresql-15-pgq3)
fi

"${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"${psql[@]}" -d "$db" >/dev/null <<'SQL'
CREATE EXTENSION pg_observers;
-- five columns, as in the baseline measurements of ENVIRONMENT.md
CREATE TABLE bench_plain (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int, total numeric(10,2), status text, created_at timestamptz DEFAULT now());
CREATE TABLE bench_observed (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_observed_nonotify (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_observed_notify_each (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_plpgsql (LIKE bench_plain INCLUDING ALL);
CREATE TABLE bench_pgq (LIKE bench_plain INCLUDING ALL);

SELECT observers.create_observer('bench_observed', 'bench_observed', '{INSERT,UPDATE,DELETE}');
SELECT observers.create_observer('bench_observed_nonotify', 'bench_observed_nonotify', '{INSERT,UPDATE,DELETE}');
SELECT observers.create_observer('bench_observed_notify_each', 'bench_observed_notify_each', '{INSERT,UPDATE,DELETE}');

-- PgQ: its C trigger, JSON payload, into a queue (ticker and consumers are not part of capture)
CREATE EXTENSION pgq;
SELECT pgq.create_queue('bench');
CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON bench_pgq
    FOR EACH ROW EXECUTE FUNCTION pgq.jsontriga('bench');

-- what a naive capture adds: a NOTIFY in every writing transaction
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('observers_wakeup', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify AFTER INSERT ON bench_observed_notify_each
    FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();

-- the usual PL/pgSQL capture trigger
CREATE TABLE ev (id bigserial PRIMARY KEY, payload json NOT NULL, created_at timestamptz DEFAULT now());
CREATE FUNCTION ev_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ev(payload) VALUES (row_to_json(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END));
    RETURN NULL;
END $$;
CREATE TRIGGER ev_capture AFTER INSERT OR UPDATE OR DELETE ON bench_plpgsql FOR EACH ROW EXECUTE FUNCTION ev_capture();
SQL

# pgbench scripts: one per (table, workload)
for t in plain observed observed_nonotify observed_notify_each plpgsql pgq; do
  cat >"$work/one_$t.sql" <<EOF
\set c random(1, 100000)
INSERT INTO bench_$t (customer_id, total, status) VALUES (:c, :c * 1.5, 'new');
EOF
  cat >"$work/hundred_$t.sql" <<EOF
INSERT INTO bench_$t (customer_id, total, status) SELECT g, g * 1.5, 'new' FROM generate_series(1, 100) AS g;
EOF
  cat >"$work/update_$t.sql" <<EOF
\set k random(1, $rows)
UPDATE bench_$t SET total = total + 1, status = 'paid' WHERE id = :k;
EOF
  cat >"$work/delete_$t.sql" <<EOF
\set k random(1, $rows)
DELETE FROM bench_$t WHERE id = :k;
EOF
done

# reset_tables [VARIANT]: empty every table and every event store; with VARIANT, preload its
# table with $rows rows without capturing them (session_replication_role = replica skips triggers)
reset_tables() {
  local variant=${1:-}
  "${psql[@]}" -d "$db" -c "TRUNCATE bench_plain, bench_observed, bench_observed_nonotify,
      bench_observed_notify_each, bench_plpgsql, bench_pgq, ev, observers.event RESTART IDENTITY" \
    -c "SELECT pgq.drop_queue('bench', true)" -c "SELECT pgq.create_queue('bench')" >/dev/null
  if [ -n "$variant" ]; then
    "${psql[@]}" -d "$db" -c "SET session_replication_role = replica" \
      -c "INSERT INTO bench_$variant (customer_id, total, status) SELECT g, g * 1.5, 'new' FROM generate_series(1, $rows) AS g" \
      -c "VACUUM ANALYZE bench_$variant" >/dev/null
  fi
  "${psql[@]}" -d "$db" -c "CHECKPOINT"
}

# run VARIANT WORKLOAD CLIENTS -> prints tps
run() {
  local variant=$1 workload=$2 clients=$3 opts=""
  case "$variant" in
    observed_nonotify|observed_notify_each) opts="-c observers.notify_interval=0" ;;
  esac
  case "$workload" in
    update|delete) reset_tables "$variant" ;;
    *) reset_tables ;;
  esac
  PGOPTIONS="$opts" "$pgbench" -n -M prepared -c "$clients" -j "$threads" -T "$seconds" \
    -f "$work/${workload}_$variant.sql" "$db" >"$work/out" 2>&1 \
    || { cat "$work/out" >&2; exit 1; }
  sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/out" | head -1
}

declare -A results
one_variants=(plain observed observed_nonotify observed_notify_each plpgsql pgq)
hundred_variants=(plain observed plpgsql pgq)
row_variants=(plain observed plpgsql pgq)
# BENCH_VARIANTS="plain observed pgq" runs only those (plain is always run: ratios need it),
# e.g. to afford more rounds in the same time
if [ -n "${BENCH_VARIANTS:-}" ]; then
  keep() { local v; for v in "$@"; do case " plain $BENCH_VARIANTS " in *" $v "*) echo "$v" ;; esac; done; }
  mapfile -t one_variants < <(keep "${one_variants[@]}")
  mapfile -t hundred_variants < <(keep "${hundred_variants[@]}")
  mapfile -t row_variants < <(keep "${row_variants[@]}")
fi

echo "pg_observers capture benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $("$bindir/postgres" --version)"
echo "installed $so: $build"
echo "server: synchronous_commit=$("${psql[@]}" -d "$db" -Atc 'SHOW synchronous_commit'), fsync=$("${psql[@]}" -d "$db" -Atc 'SHOW fsync'), shared_buffers=$("${psql[@]}" -d "$db" -Atc 'SHOW shared_buffers'); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pgbench -n -M prepared -j $threads -T $seconds, $rounds rounds, variants alternating within each round (their order rotated every round)"
echo

# rotate LIST... by N: the variants' order changes every round, so that no variant always runs
# first (right after the previous workload) or last
rotate() { local n=$1; shift; local a=("$@") i; for i in "${!a[@]}"; do echo "${a[$(((i + n) % ${#a[@]}))]}"; done; }

for r in $(seq 1 "$rounds"); do
  for v in $(rotate "$r" "${one_variants[@]}"); do
    tps=$(run "$v" one "$clients1")
    results["one,$v"]+="$tps "
    printf '  round %s  1-row   x%-2s %-22s %10.0f tps\n' "$r" "$clients1" "$v" "$tps"
  done
  for v in $(rotate "$r" "${hundred_variants[@]}"); do
    tps=$(run "$v" hundred "$clients100")
    results["hundred,$v"]+="$tps "
    printf '  round %s  100-row x%-2s %-22s %10.0f stmt/s\n' "$r" "$clients100" "$v" "$tps"
  done
  for w in update delete; do
    for v in $(rotate "$r" "${row_variants[@]}"); do
      tps=$(run "$v" "$w" "$clients1")
      results["$w,$v"]+="$tps "
      printf '  round %s  %-7s x%-2s %-22s %10.0f tps\n' "$r" "$w" "$clients1" "$v" "$tps"
    done
  done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Ratios are taken within each round (plain and the variant ran minutes apart at most), then
# the median over rounds: on a shared machine absolute throughput swings between rounds far
# more than the ratio does.
report() {
  local workload=$1 title=$2 unit=$3; shift 3
  local base=(${results["$workload,plain"]})
  echo
  echo "$title: median over $rounds rounds of plain/variant measured in the same round"
  printf '  %-22s %12s %14s   %s\n' variant "median $unit" "plain/variant" "per-round ratios"
  for v in "$@"; do
    local runs=(${results["$workload,$v"]}) ratios=""
    for i in "${!runs[@]}"; do
      ratios+="$(awk -v b="${base[$i]}" -v m="${runs[$i]}" 'BEGIN {printf "%.2f", b / m}') "
    done
    printf '  %-22s %12.0f %13.2fx   %s\n' "$v" "$(echo "${runs[*]}" | median)" "$(echo "$ratios" | median)" "$ratios"
  done
}

report one "1-row INSERT transactions, $clients1 clients" tps "${one_variants[@]}"
report hundred "100-row INSERT statements, $clients100 clients" stmt/s "${hundred_variants[@]}"
report update "1-row UPDATE transactions by key, $clients1 clients" tps "${row_variants[@]}"
report delete "1-row DELETE transactions by key, $clients1 clients" tps "${row_variants[@]}"
echo
echo "observed: pg_observers, one observer (INSERT, UPDATE, DELETE, no condition); plpgsql: AFTER ROW trigger inserting row_to_json(NEW or OLD); pgq: pgq.jsontriga"
echo "observed_nonotify: observers.notify_interval = 0; observed_notify_each: plus pg_notify() in every transaction"
