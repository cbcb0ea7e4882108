# Every target sets up what it needs: a fresh machine runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-galera soak scale failover galera clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,mysql]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/restart_demo.py

# Two pytest-xdist workers, each with its own databases and ports (tests/helpers.py), and its own
# PostgreSQL 18 server from a wheel for the modules that run on it too (tests/postgres18.py):
# under half the time of one process on two cores; a third worker gained nothing there.
# `make failover` and `make soak` stay in one process.
test: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest -n 2

# Not a test: prints figures and ratios, never fails on them. PostgreSQL is skipped if unreachable.
bench: $(STAMP)
	$(BIN)/python bench/bench.py

# A save's and a load's p50 on the plain MariaDB server and through a three-node Galera cluster
# it builds (root, galera-4, rsync): not part of `make bench`.
bench-galera: $(STAMP)
	$(BIN)/python bench/galera.py

# The long crash loop: 200 SIGKILLs per database, then the counts of kills and checked saves;
# the long fault run: 20,000 calls and 200 injected faults per database, then the checker's counts;
# the synchronous bot holding its lease through 60 s with a ttl of 5 s on PostgreSQL.
soak: $(STAMP)
	RUSTRADE_CRASH_KILLS=200 $(BIN)/python -m pytest tests/test_crash.py -s -q
	RUSTRADE_FAULT_OPS=20000 RUSTRADE_FAULT_FAULTS=200 $(BIN)/python -m pytest tests/test_faults.py -s -q
	RUSTRADE_SYNC_BOT_SECONDS=60 RUSTRADE_SYNC_BOT_TTL=5 $(BIN)/python -m pytest tests/test_sync_processes.py -k long_run -s -q

# The failover tests alone, with their figures: a primary and a standby built as extra clusters,
# writers through a multi-host URL, the primary stopped and the standby promoted, the clusters
# dropped. Root and Debian's PostgreSQL 15. Not in `make test` (a minute more); CI runs both.
failover: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest tests/test_failover.py -m failover -s -q

# The Galera tests alone, with their figures: a three-node MariaDB Galera cluster built on loopback
# ports per test module (tests/galera.py), writes and reads through every node, nodes killed,
# isolated and restarted, the cluster removed. Root, MariaDB 10.11, galera-4 and rsync. Not in
# `make test`; CI runs both.
galera: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest tests/test_galera.py tests/test_galera_faults.py -m galera -p no:xdist -s -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Not part of `make test`: a million snapshots through export, import and copy (10+ minutes).
scale: $(STAMP)
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
