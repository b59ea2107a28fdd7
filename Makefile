# Two commands do all set-up themselves: `make bench` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rbench-installed
SUITE ?= mini
# The default path never downloads: hub libraries are told they are offline.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export OMP_NUM_THREADS ?= 2

.PHONY: install bench test leaderboard regress perf fault-injection clean-results

install: $(STAMP)

$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --prefer-binary -r requirements/cpu.txt
	# torchattacks' declared deps pull a CUDA torchvision that breaks transformers; its code needs none of them.
	$(PY) -m pip install --no-deps torchattacks==3.5.1
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

bench: install
	$(VENV)/bin/rbench run $(SUITE)
	$(VENV)/bin/rbench leaderboard $(SUITE) --html

leaderboard: install
	$(VENV)/bin/rbench leaderboard $(SUITE) --html

# The CI regression gate. One thread: the models are tiny, and a second thread only adds
# synchronisation (measured: 10x the CPU time when other processes share the cores).
regress: install
	OMP_NUM_THREADS=1 $(VENV)/bin/rbench regress --suite ci-regress \
		--baseline leaderboards/ci-regress/baseline.json

test: install
	$(PY) -m pytest

# Throughput of models, evaluator, attacks, certifiers and the Ray executor; writes benchmarks/results/perf.json.
perf: install
	$(PY) benchmarks/perf.py

# Kill `rbench run` with SIGKILL at 24 seeded points (training, evaluation, attack, store commit,
# wall clock), resume each, compare with an uninterrupted run; writes benchmarks/results/fault_injection.json.
# pytest runs two of these trials (tests/test_fault_injection.py).
fault-injection: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/fault_injection.py --trials 24

clean-results:
	rm -f results/$(SUITE).sqlite
