# vitrt: two commands do all set-up on a fresh machine.
#   make engine   build artifacts/ (venv + export + verification)
#   make test     run the test suite
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
WEIGHTS  ?= hub
SEED     ?= 0
ARTIFACTS ?= artifacts
NAME     ?= b16_384
EXPORT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: engine test venv clean

venv: $(VENV)/.installed

# One pip command installs torch, torchvision and timm together (a later lone `pip install timm`
# can swap torch under you); re-runs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,test]'
	touch $@

engine: venv
	$(PY) -m export --weights '$(WEIGHTS)' --seed $(SEED) --output-dir '$(ARTIFACTS)' --name '$(NAME)' $(EXPORT_ARGS)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(ARTIFACTS) reports
