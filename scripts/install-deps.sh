#!/usr/bin/env bash
# Install everything `make demo`, `make test` and `make bench` need, idempotently:
#   Debian packages (PostgreSQL 15 server + headers, clang for bindgen, sudo for cargo-pgrx,
#   redis-server for the tests that run a private Redis),
#   cargo-pgrx 0.18.0 (pinned: pgrx 0.19 needs a newer Rust than this machine has),
#   and `cargo pgrx init` against the system PostgreSQL 15 (downloads nothing).
# Safe to run again: each step checks first and skips what is already there.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.0
say() { printf '==> %s\n' "$*"; }

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages
pkgs=(postgresql-15 postgresql-server-dev-15 postgresql-contrib clang libclang-dev sudo pkg-config
      libssl-dev ca-certificates redis-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# 2. cargo-pgrx, pinned
if cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
  say "cargo-pgrx $PGRX_VERSION present"
else
  say "installing cargo-pgrx $PGRX_VERSION (about 4 minutes on 2 cores)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi

# 3. pgrx init against the system PostgreSQL 15
pgrx_home=${PGRX_HOME:-$HOME/.pgrx}
if [ -f "$pgrx_home/config.toml" ] && grep -q "pg15" "$pgrx_home/config.toml"; then
  say "cargo pgrx already initialised for pg15"
else
  say "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
