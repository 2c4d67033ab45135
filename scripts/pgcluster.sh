#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests, the demo and benchmarks.
#
#   scripts/pgcluster.sh start DIR PORT [postgres -c options...]   initdb (once) + start, loopback only
#                                          (pg_observers preloaded unless PGCLUSTER_PRELOAD=0)
#   scripts/pgcluster.sh stop  DIR                                 fast shutdown (no-op if not running)
#   scripts/pgcluster.sh destroy DIR                               stop and remove DIR
#   scripts/pgcluster.sh url DIR PORT [DB]                         print a connection URL
#
# The cluster listens on 127.0.0.1 only, with trust auth for loopback: it is never meant to hold
# anything you want to keep. PostgreSQL refuses to run as root, so as root it runs as `postgres`
# and DIR must be somewhere that user can reach (we use /tmp by default in the Makefile).
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,10p' "$0"; exit 2; }

as_pg() {
  # from / : the caller's directory may not be readable by postgres (e.g. a mktemp -d clone)
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

running() { [ -f "$dir/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; }

case "$cmd" in
start)
  port=${3:?port required}; shift 3
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
      || { cat "$dir.initdb.log" >&2; exit 1; }
    cat >>"$dir/postgresql.conf" <<EOF
# written by scripts/pgcluster.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
fsync = ${PGCLUSTER_FSYNC:-on}
log_min_messages = warning
EOF
    # pg_observers preloaded (its event id counter's shared memory reserved at start-up,
    # capture/ids.rs); PGCLUSTER_PRELOAD=0 runs without it, as a server that only did CREATE
    # EXTENSION does (the timeless SQL tests run that way).
    if [ "${PGCLUSTER_PRELOAD:-1}" = 1 ]; then
      echo "shared_preload_libraries = 'pg_observers'" >>"$dir/postgresql.conf"
    fi
  fi
  if running; then echo "cluster $dir already running"; exit 0; fi
  extra=()
  for o in "$@"; do extra+=("-c" "$o"); done
  as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-p $port ${extra[*]:-}" start >/dev/null \
    || { tail -20 "$dir/server.log" >&2; exit 1; }
  echo "cluster $dir running on 127.0.0.1:$port"
  ;;
stop)
  if running; then as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null; echo "cluster $dir stopped"; fi
  ;;
destroy)
  if running; then as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null || true; fi
  rm -rf "$dir" "$dir.initdb.log"
  ;;
url)
  port=${3:?port required}; db=${4:-postgres}
  echo "postgres://postgres@127.0.0.1:$port/$db"
  ;;
*) sed -n '2,10p' "$0"; exit 2 ;;
esac
