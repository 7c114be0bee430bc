# tumorseg-d2: `make demo` (train, evaluate, draw) and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tumorseg-env

.PHONY: env demo test clean-env

env: $(STAMP)

# Rebuilt only when the pins or the install scripts change, so `make env` is cheap to repeat.
$(STAMP): requirements.lock setup.py tools/install_detectron2.py tools/detectron2_C_shim.py
	@start=$$(date +%s); set -e; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock; \
	$(PY) tools/install_detectron2.py; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	touch $@; \
	echo "[make env] environment ready in $$(( $$(date +%s) - start )) s"

demo: env
	$(PY) tools/demo.py $(ARGS)

test: env
	$(PY) -m pytest tests $(ARGS)

clean-env:
	rm -rf $(VENV)
