# The two commands of the README. Both build .venv from requirements.lock first (once).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rpdist-installed
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test venv clean-venv benchmark gpu-check

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rpdist certify --dataset insurance --sigma 0.5 --n 10000

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) benchmarks/throughput.py

# Not tied to $(STAMP): a GPU machine may have no internet to build .venv; the script finds a
# Python with a CUDA torch itself (see its header). ARGS="--device cpu --quick" for a CPU smoke run.
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

clean-venv:
	rm -rf $(VENV)
