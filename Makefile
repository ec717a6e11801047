# Two commands on a fresh machine with only python3 and make:
#   make demo   set up, generate demo data, validate it, build features, train the policy,
#               register it in MLflow (./mlflow.db), promote it to champion, show decisions, then
#               start the decision service and show real answers of every endpoint
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo
DEMO_SIZE := --customers 5000 --days 60 --seed 7

.PHONY: setup system-deps demo ui notebooks test bench bench-bandits bench-serving lock clean

setup: $(STAMP) system-deps

# System packages the tests and benchmarks use: a real Redis server, the wrk load generator and
# Chromium (the browser test of the MLflow UI drives Debian's chromium through Playwright)
# (Debian/Ubuntu; apt-get as root, or through sudo). Skipped when they are already installed.
SYSTEM_PACKAGES := redis-server wrk chromium
system-deps:
	@missing=""; for c in $(SYSTEM_PACKAGES); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q $$missing >/dev/null 2>&1 || \
	    { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$missing >/dev/null; } || \
	    { echo "could not install$$missing: install them with your package manager"; exit 1; }; \
	fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/nextbest data generate $(DEMO_SIZE) --out $(DEMO)/data
	$(BIN)/nextbest data validate $(DEMO)/data
	$(BIN)/nextbest features build $(DEMO)/data --out $(DEMO)/features.parquet
	$(BIN)/nextbest -q train $(DEMO)/data --promote
	$(BIN)/nextbest -q decide $(DEMO)/data --customers 5
	$(BIN)/nextbest -q serve $(DEMO)/data --demo

# The MLflow UI on the project's store; prints the champion's training run and uplift report pages
ui: setup
	$(BIN)/nextbest ui

# Re-execute the notebooks in place on the demo data (their stored outputs come from this). Needs
# the demo data and a champion: made here as `make demo` makes them when missing. Each notebook is
# written back only if every cell ran.
notebooks: setup
	@test -e $(DEMO)/data/customers.parquet || $(BIN)/nextbest -q data generate $(DEMO_SIZE) --out $(DEMO)/data
	@$(BIN)/python -c "import sys; from nextbest.decision import registry; sys.exit(registry.champion_version() is None)" \
	  || $(BIN)/nextbest -q train $(DEMO)/data --promote
	cd notebooks && for nb in 01_explore_engagement 02_retrain_and_tune 03_evaluate_and_promote 04_your_own_data; do \
	  ../$(BIN)/papermill --cwd . $$nb.ipynb .$$nb.running.ipynb && mv .$$nb.running.ipynb $$nb.ipynb || exit 1; done

# two test processes share two cores: one OpenMP thread each (decision/threads.py says why)
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

bench: setup
	$(BIN)/python benchmarks/feature_pipeline.py

# exploration, online learning and off-policy evaluation (about 40 minutes on 2 cores)
bench-bandits: setup
	$(BIN)/python benchmarks/decision_latency.py
	$(BIN)/python benchmarks/obd.py
	$(BIN)/python benchmarks/ope_simulator.py
	$(BIN)/python benchmarks/closed_loop.py

# the decision service under load: wrk against a no-op BentoML endpoint, batches, Redis with 2 workers (~5 min)
bench-serving: setup
	$(BIN)/python benchmarks/serving.py

# Re-resolve the pinned set (needs the registries): writes constraints.txt from a scratch venv.
lock:
	rm -rf /tmp/nextbest-lock && $(PYTHON) -m venv /tmp/nextbest-lock
	/tmp/nextbest-lock/bin/pip install --quiet -e '.[dev]'
	/tmp/nextbest-lock/bin/pip freeze --exclude-editable | grep -v '^nextbest' > constraints.txt

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info mlflow.db mlruns test-output nextbest_params.json \
	  serving/state.db serving/state.db-wal serving/state.db-shm serving/log serving/bentoml
