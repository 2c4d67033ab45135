#!/usr/bin/env bash
# Install everything `make demo`, `make test` and `make bench` need, idempotently:
#   Debian packages (PostgreSQL 15 server + headers, clang for bindgen, sudo for cargo-pgrx,
#   redis-server for the tests that run a private Redis, python3-aiosmtpd (a real SMTP server for
#   the e-mail tests, tests/smtp/smtp_sink.py, run with /usr/bin/python3), faketime (libfaketime) for the SQL suite
#   on a cluster whose clock is moved (scripts/test-sql-timeless.sh), prometheus for the metrics tests, which
#   run a private Prometheus and promtool; the packaged prometheus service is left stopped and
#   disabled), curl, openssl, nodejs and a JDK when missing (the guides' receivers),
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
      libssl-dev ca-certificates redis-server faketime python3-aiosmtpd)
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

# 1a. What the guides' blocks run (tests/tests/e2e/guides.rs: docs/INTEGRATION_GUIDE.md starts
#     receivers in Python, Node.js and Java): a command already on PATH, from wherever, is enough.
guide_pkgs=()
command -v curl >/dev/null || guide_pkgs+=(curl)
command -v openssl >/dev/null || guide_pkgs+=(openssl)
command -v node >/dev/null || guide_pkgs+=(nodejs)
command -v java >/dev/null || guide_pkgs+=(default-jdk-headless)
if ((${#guide_pkgs[@]})); then
  say "installing Debian packages for the guides' examples: ${guide_pkgs[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${guide_pkgs[@]}" >/dev/null
else
  say "curl, openssl, node and java present"
fi

# 1b. Prometheus (Debian 2.42): the metrics tests start their own `prometheus` on a free port
#     and lint with `promtool`. The package's own service must not run: apt is told not to start
#     it (policy-rc.d, only if the machine has none), then it is stopped and disabled anyway.
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
  say "installing Debian package: prometheus (service left stopped and disabled)"
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee "$policy" >/dev/null
    sudo_if_needed chmod 755 "$policy"
    own_policy=1
  fi
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null || { [ "$own_policy" = 1 ] && sudo_if_needed rm -f "$policy"; exit 1; }
  [ "$own_policy" = 1 ] && sudo_if_needed rm -f "$policy"
else
  say "prometheus present"
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  sudo_if_needed systemctl disable --now prometheus >/dev/null 2>&1 || true
else
  sudo_if_needed service prometheus stop >/dev/null 2>&1 || true
  sudo_if_needed update-rc.d prometheus disable >/dev/null 2>&1 || true
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

# 4. osmem-server (PyPI): an in-memory OpenSearch-compatible server, a static binary inside the
#    wheel, for the Elasticsearch sink's end-to-end test (docs/SEARCH.md says what it verifies).
#    The tests find it with: python3 -c 'import osmem_server; print(osmem_server.resolve_binary())'
if python3 -c 'import osmem_server' 2>/dev/null; then
  say "osmem-server present"
else
  say "installing osmem-server (pip)"
  python3 -m pip install -q osmem-server
fi
