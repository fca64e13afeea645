# The README's commands. All but gpu-check build .venv from requirements.lock first (once).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rpdist-installed
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test venv clean-venv benchmark gpu-check mia-digits mia-mnist5k role-models

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
	$(PY) -m pytest -q -n 2 --dist loadgroup

benchmark: $(STAMP)
	$(PY) benchmarks/throughput.py

# The model-inversion reproductions (README, "Model inversion"): every sweep file of the dataset, then one
# report. Finished points are skipped, so on a clone with the committed results this only redraws the report.
mia-digits: $(STAMP) role-models
	$(VENV)/bin/rpdist sweep results/mia/*.yaml --out results/mia/sweeps --quiet
	$(VENV)/bin/rpdist report results/mia/sweeps

mia-mnist5k: $(STAMP) role-models
	$(VENV)/bin/rpdist sweep results/mia/mnist5k/*.yaml --out results/mia/mnist5k/sweeps --quiet
	$(VENV)/bin/rpdist report results/mia/mnist5k/sweeps

# The role models the latest committed attack results ran on (results/mia/models/README.md), copied into
# the model cache under their recipe names unless the cache already holds a model of that recipe: new points
# then run on the committed results' models instead of models retrained on this machine, which differ.
ROLE_CACHE := $(or $(RPDIST_CACHE),$(HOME)/.cache/rpdist)
role-models:
	@mkdir -p "$(ROLE_CACHE)"
	@for f in results/mia/models/*.pt; do dest="$(ROLE_CACHE)/$${f##*/}"; \
	  if [ -e "$$dest" ]; then cmp -s "$$f" "$$dest" || echo "keeping $$dest: another model of the same recipe (results pair only on the committed ones)"; \
	  else cp "$$f" "$$dest.part" && mv "$$dest.part" "$$dest" && echo "cached $${f##*/}"; fi; done

# Not tied to $(STAMP): a GPU machine may have no internet to build .venv; the script finds a
# Python with a CUDA torch itself (see its header). ARGS="--device cpu --quick" for a CPU smoke run.
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

clean-venv:
	rm -rf $(VENV)
