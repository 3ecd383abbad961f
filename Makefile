# holocron-optim: `make demo`, `make test`, `make build`, `make install PREFIX=dir`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
PREFIX ?= $(CURDIR)/install
APT_PACKAGES := libgtest-dev ninja-build ccache
TORCH_PREFIX = $(shell $(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')

.PHONY: all build deps apt-deps venv configure cpp python test test-cpp test-python demo install bench clean

all: build

build: python

# Debian packages the build needs; installed only when missing.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -r requirements-dev.txt
	# The reference implementation, a test oracle only; its dependencies would pull torchvision.
	$(PY) -m pip install -q --no-deps pylocron==0.3.0
	touch $@

venv: $(VENV)/.deps

$(BUILD)/build.ninja: $(VENV)/.deps CMakeLists.txt tests/cpp/CMakeLists.txt | apt-deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
	  $$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

configure: apt-deps $(BUILD)/build.ninja

cpp: configure
	cmake --build $(BUILD) -j2

# The Python package loads the library built above from inside its folder.
python: cpp
	mkdir -p python/holocron_optim/lib
	cp -u $(BUILD)/libholocron_optim.so python/holocron_optim/lib/
	@$(PY) -c 'import holocron_optim' 2>/dev/null || \
	  $(PY) -m pip install -q --no-build-isolation --no-deps -e . >/dev/null

test: build
	cd $(BUILD) && ctest --output-on-failure -j2
	$(PY) -m pytest -q tests/python

test-cpp: cpp
	cd $(BUILD) && ctest --output-on-failure -j2

test-python: python
	$(PY) -m pytest -q tests/python

demo: cpp
	$(BUILD)/holocron_demo

install: cpp
	cmake --install $(BUILD) --prefix "$(PREFIX)"

# Benchmark (bench/bench.py; under 10 minutes on 2 idle cores): make bench BENCH_ARGS="--quick --workloads small-3000"
bench: build
	@grep -q holocron_bench $(BUILD)/build.ninja || cmake -S . -B $(BUILD) >/dev/null
	cmake --build $(BUILD) -j2 --target holocron_bench
	$(PY) bench/bench.py --bin $(BUILD)/bench/holocron_bench $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) python/holocron_optim/lib
