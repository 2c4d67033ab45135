# FraiseQL Observers — every entry point a user or CI needs.
#   make demo   the main job end to end on a private PostgreSQL cluster (PostgreSQL only)
#   make test   the whole test suite against real services (what .ci/run calls)
#   make lint   rustfmt --check and clippy -D warnings on every crate (.ci/run calls it first)
#   make bench  capture overhead + end-to-end delivery benchmarks
#   make bench-capture-instructions  only the capture cost in CPU instructions per row (callgrind)
# Each target installs what it needs first (scripts/install-deps.sh is idempotent).

SHELL      := /bin/bash
PG_CONFIG  ?= /usr/lib/postgresql/15/bin/pg_config
CARGO      ?= cargo
# The extension is always built with optimisations: it sits on users' write path, and the demo,
# tests and benchmarks should all exercise the code users run.
EXT_FLAGS  := --release

.PHONY: all deps install-ext build build-release test test-sql test-rust demo bench bench-capture-instructions clean-clusters fmt clippy lint

all: build

deps:
	@scripts/install-deps.sh

install-ext: deps
	@echo "==> building and installing pg_observers into $$($(PG_CONFIG) --sharedir)"
	$(CARGO) pgrx install -p pg_observers --pg-config $(PG_CONFIG) $(EXT_FLAGS)
	@scripts/install-upgrade-scripts.sh $(PG_CONFIG)

build: deps
	$(CARGO) build --bins

build-release: deps
	$(CARGO) build --release --bins

test: install-ext build
	@scripts/test.sh

demo: install-ext build
	@scripts/demo.sh

bench: install-ext build-release
	@PG_CONFIG=$(PG_CONFIG) scripts/bench.sh

# deterministic: valgrind counts instructions (installs valgrind and PgQ, the peer, if missing)
bench-capture-instructions: install-ext
	@PG_CONFIG=$(PG_CONFIG) scripts/bench-capture-instructions.sh

clean-clusters:
	@for d in /tmp/fraiseql-observers-*; do [ -d "$$d" ] && scripts/pgcluster.sh destroy "$$d" || true; done

fmt:
	$(CARGO) fmt --all

# --workspace: the extension is not a default member, but it is linted too (it needs
# `cargo pgrx init`, hence deps); #![deny(clippy::undocumented_unsafe_blocks)] in pg_observers
# makes every unsafe block carry a `// SAFETY:` comment.
clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
