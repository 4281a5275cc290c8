# ComfyUI-Parallel developer targets. Each is idempotent and quick when already done.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEFAULT_COMFYUI := $(CURDIR)/.comfyui
COMFYUI_DIR ?= $(DEFAULT_COMFYUI)
PORT ?= 8188
COMFY_ARGS ?=
PYTEST_ARGS ?=
# make test-hosts: the ComfyUI releases (devtools/host.py RELEASES) and the tests run on each
HOSTS ?= 0.3.75 0.3.52
HOST_TESTS ?= tests/integration tests/e2e tests/unit/models/comfy
export COMFYUI_DIR

.PHONY: setup serve demo test test-hosts bench gpu-check seedvr-manifest clean

setup: $(VENV)/.installed $(VENV)/.browser $(COMFYUI_DIR)/.comfyui-parallel-linked

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -r requirements.txt
	touch $@

# Debian's Chromium for the UI-workflow browser test (a test tool's own browser download fails here).
# When it cannot be installed, setup goes on and the browser test fails saying so.
$(VENV)/.browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "WARNING: Debian's chromium could not be installed; the UI workflow test will fail"
	command -v chromium >/dev/null && touch $@ || true

$(COMFYUI_DIR)/.comfyui-parallel-linked: $(VENV)/.installed
	$(PY) -m devtools.host install --comfyui-dir "$(COMFYUI_DIR)" --default-dir "$(DEFAULT_COMFYUI)"
	touch $@

serve: setup
	$(PY) -m devtools.host serve --comfyui-dir "$(COMFYUI_DIR)" --port $(PORT) $(COMFY_ARGS)

demo: setup
	$(PY) devtools/demo.py --comfyui-dir "$(COMFYUI_DIR)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Each release in HOSTS installed if needed (.hosts/<release>/; 0.3.75 is .comfyui/), HOST_TESTS run on it.
test-hosts: setup
	$(PY) -m devtools.host_matrix $(HOSTS) --tests $(HOST_TESTS) -- $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

# The figures that need a CUDA GPU (benchmarks/results-gpu.json); without one it says so and exits 0.
gpu-check: $(VENV)/.installed $(COMFYUI_DIR)/.comfyui-parallel-linked
	$(PY) benchmarks/gpu_check.py

seedvr-manifest: setup
	$(PY) -m devtools.seedvr_manifest

clean:
	rm -rf out .pytest_cache
