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

.PHONY: install bench test leaderboard perf clean-results

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
	$(VENV)/bin/rbench leaderboard $(SUITE)

leaderboard: install
	$(VENV)/bin/rbench leaderboard $(SUITE)

test: install
	$(PY) -m pytest

# Certification speed, naive per-sample versus batched, on SST-2 from ../shared/data (see the script).
perf: install
	$(PY) benchmarks/perf_certify.py

clean-results:
	rm -f results/$(SUITE).sqlite
