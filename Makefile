# holocron-optim: `make demo`, `make test`, `make build`, `make docs`, `make wheel`,
# `make install PREFIX=dir`, `make bench`, `make test-torch TORCH=2.14.1`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
PREFIX ?= $(CURDIR)/install
APT_PACKAGES := libgtest-dev ninja-build ccache libgloo-dev
DEMO_OUT := $(BUILD)/demo
DIST := $(BUILD)/dist
WHEEL_VENV := $(BUILD)/wheel-test/venv
# torch warns on import when NumPy is missing, which the wheel test venv is on purpose.
QUIET_NUMPY := -W "ignore:Failed to initialize NumPy"
TORCH_PREFIX = $(shell $(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')
# ccache shares the objects of builds that compile the same sources with the
# same flags in different folders: the library of build/ and of the wheel
# (build-wheel/), of build-torch-X/wheel/ and build-torch-X/cmake/. It hashes
# paths under the checkout relative to each build's folder (the folders of a
# pair lie at one depth), and the compiler's name: every build is given one
# ($(CXX), g++ unless set), since CMake alone picks c++ and scikit-build g++.
# The sloppiness lets it cache files compiled with a precompiled header
# (CMakeLists.txt), which it otherwise compiles every time.
CCACHE_BASEDIR ?= $(CURDIR)
CCACHE_NOHASHDIR ?= 1
CCACHE_SLOPPINESS ?= pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR CCACHE_NOHASHDIR CCACHE_SLOPPINESS CXX
WHEEL_BUILD := $(BUILD)-wheel

.PHONY: all build deps apt-deps venv configure cpp python package test test-cpp test-python test-wheel test-torch test-asan fuzz wheel demo docs install bench bench-timm bench-fsdp2 bench-zero-offload clean

all: build

build: python

# Debian packages the build needs; installed only when missing.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.deps: requirements-dev.txt requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -r requirements-dev.txt
	# The reference implementation, a test oracle only; its dependencies would pull torchvision.
	$(PY) -m pip install -q --no-deps pylocron==0.3.0
	# DeepSpeed for tests/python/test_deepspeed.py (holocron_optim.deepspeed): with
	# its ops unbuilt; on its CPU accelerator it JIT-builds one small op at start.
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-deps --no-build-isolation deepspeed==0.19.8
	# torchao for tests/python/test_torchao_offload.py (its CPUOffloadOptimizer, pure Python).
	$(PY) -m pip install -q --no-deps torchao==0.18.0
	# timm for tests/python/test_param_groups.py, an oracle loaded file by file (its package
	# __init__ would pull torchvision).
	$(PY) -m pip install -q --no-deps timm==1.0.31
	touch $@

venv: $(VENV)/.deps

$(BUILD)/build.ninja: $(VENV)/.deps CMakeLists.txt tests/cpp/CMakeLists.txt | apt-deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
	  $$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

configure: apt-deps $(BUILD)/build.ninja

cpp: configure
	cmake --build $(BUILD) -j2

# The Python package loads the library built above from inside its folder;
# a .pth file puts python/ on .venv's path (a wheel is `make wheel`).
python: cpp package

# The library alone, into the Python package (what the demo needs of it).
package: configure
	cmake --build $(BUILD) -j2 --target holocron_optim
	mkdir -p python/holocron_optim/lib
	cp -u $(BUILD)/libholocron_optim.so $(BUILD)/torch_version.txt python/holocron_optim/lib/
	@echo "$(CURDIR)/python" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/holocron_optim_dev.pth"

test: build
	cd $(BUILD) && ctest --output-on-failure -j2
	$(PY) -m pytest -q tests/python
	$(MAKE) --no-print-directory test-wheel
	$(MAKE) --no-print-directory docs

# Against another torch release (CPU or CUDA build), as its users build it:
# a venv with that torch and requirements-test.txt, kept between runs outside
# the checkout (TORCH_CACHE) since a CUDA torch is gigabytes; there
# `pip install --no-build-isolation .` (the wheel must require that torch),
# then a CMake build in build-torch-$(TORCH)/ for the C++ tests and the
# programs the Python tests drive, CTest, and pytest on the installed package.
# The two builds share ccache's objects (CCACHE_BASEDIR above). The wheel is
# built with no nvcc on PATH (a machine without a CUDA toolkit, as most users'
# are), the CMake build with the toolkit when there is one: both ways of
# meeting a CUDA torch (cmake/holocron_optimTorch.cmake) run every time.
TORCH ?= 2.14.1
TORCH_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/holocron-optim
TORCH_VENV := $(TORCH_CACHE)/venv-torch-$(TORCH)
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_BUILD := build-torch-$(TORCH)
test-torch: | apt-deps
	test -x $(TORCH_PY) || python3 -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install -q torch==$(TORCH) -r requirements-test.txt
	$(TORCH_PY) -m pip install -q --no-deps pylocron==0.3.0 timm==1.0.31
	env -u CUDACXX PATH="$$(printf '%s\n' "$$PATH" | tr : '\n' | while read -r d; do [ -x "$$d/nvcc" ] || printf '%s\n' "$$d"; done | paste -sd:)" \
	  $(TORCH_PY) -m pip install -q --no-build-isolation -C build-dir=$(TORCH_BUILD)/wheel \
	  $$(command -v ccache >/dev/null && echo -C cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache) .
	cd $(TORCH_BUILD) && $(TORCH_PY) $(QUIET_NUMPY) -c 'import importlib.metadata as m, holocron_optim, sys, torch; \
	  assert holocron_optim.__file__.startswith(sys.prefix), holocron_optim.__file__; \
	  req = m.requires("holocron-optim"); print("torch", torch.__version__, "wheel requires", req); \
	  assert req == ["torch==" + torch.__version__.split("+")[0]], req'
	cmake -S . -B $(TORCH_BUILD)/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(TORCH_PY) $(QUIET_NUMPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(TORCH_PY) \
	  $$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
	cmake --build $(TORCH_BUILD)/cmake -j2
	cd $(TORCH_BUILD)/cmake && ctest --output-on-failure -j2
	cd $(TORCH_BUILD) && HOLOCRON_OPTIM_BUILD_DIR=$(CURDIR)/$(TORCH_BUILD)/cmake \
	  $(TORCH_PY) -m pytest -q -p no:cacheprovider --rootdir $(CURDIR) $(CURDIR)/tests/python

# The library and the C++ tests built with ASan and UBSan into build-asan/,
# then run (the projects that install the library are left out: they link an
# uninstrumented program against it). LeakSanitizer is on.
ASAN_BUILD := build-asan
test-asan: venv | apt-deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0" -DHOLOCRON_OPTIM_SANITIZE=ON \
	  -DHOLOCRON_OPTIM_BUILD_EXAMPLES=OFF -DHOLOCRON_OPTIM_BUILD_BENCH=OFF \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
	  $$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
	cmake --build $(ASAN_BUILD) -j2
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j2 -LE consumer

# libFuzzer (clang from Debian): the library with coverage, ASan and UBSan
# into build-fuzz/, then each target of tests/fuzz/ for FUZZ_SECONDS (corpora
# kept in build-fuzz/corpus/; tests/fuzz/seeds/ holds inputs that once failed,
# replayed first). Crashes are written as crash-* files. Leak checks are off:
# libtorch's zip reader leaks on a damaged checkpoint. A damaged checkpoint
# can also make libtorch's unpickler ask for gigabytes: allocations over 2 GB
# fail (std::bad_alloc, which a load must survive) instead of counting as OOM.
FUZZ_BUILD := build-fuzz
FUZZ_ASAN_OPTIONS := detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=2048
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := fuzz_functional fuzz_checkpoint
fuzz: venv | apt-deps
	@command -v clang++ >/dev/null && ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev >/dev/null; }
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DHOLOCRON_OPTIM_FUZZ=ON -DHOLOCRON_OPTIM_BUILD_TESTS=OFF \
	  -DHOLOCRON_OPTIM_BUILD_EXAMPLES=OFF -DHOLOCRON_OPTIM_BUILD_BENCH=OFF \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" -DPython3_EXECUTABLE=$(CURDIR)/$(PY) \
	  $$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
	cmake --build $(FUZZ_BUILD) -j2 --target $(FUZZ_TARGETS)
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t && seeds=$(CURDIR)/tests/fuzz/seeds/$$t && \
	  { [ -d $$seeds ] || seeds=; } && \
	  (cd $(FUZZ_BUILD) && ASAN_OPTIONS=$(FUZZ_ASAN_OPTIONS) ./$$t -max_total_time=$(FUZZ_SECONDS) \
	    -rss_limit_mb=4096 -print_final_stats=1 corpus/$$t $$seeds) || exit 1; \
	done

test-cpp: cpp
	cd $(BUILD) && ctest --output-on-failure -j2

test-python: python
	$(PY) -m pytest -q tests/python

# Trains with every optimizer, then the state precisions' quality table (demo/quality.py, with
# the Python package), then plots: PNGs in build/demo. Builds only the library and the demo
# program (make build / make test build the rest).
demo: configure venv package
	cmake --build $(BUILD) -j2 --target holocron_demo
	$(BUILD)/holocron_demo --out $(DEMO_OUT)
	$(PY) demo/quality.py --out $(DEMO_OUT)
	$(PY) demo/plot.py $(DEMO_OUT)

# The C++ API reference: build/docs/html/index.html (warnings are errors).
docs: apt-deps
	@command -v doxygen >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq doxygen >/dev/null; }
	doxygen docs/Doxyfile
	@echo "API reference: $(CURDIR)/$(BUILD)/docs/html/index.html"

# A wheel of the Python package with the library inside, built by
# scikit-build-core against .venv's torch: build/dist/*.whl.
wheel: venv | apt-deps
	rm -f $(DIST)/holocron_optim-*.whl
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(DIST) -C build-dir=$(WHEEL_BUILD) \
	  $$(command -v ccache >/dev/null && echo -C cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache) .

# The wheel installed into a new virtual environment that has only torch,
# then the Python example trained with it, from outside the checkout.
test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(WHEEL_VENV)/bin/python -m pip install -q $(DIST)/holocron_optim-*.whl
	cd $(WHEEL_VENV) && bin/python $(QUIET_NUMPY) -c 'import holocron_optim, sys; \
	  assert holocron_optim.__file__.startswith(sys.prefix), holocron_optim.__file__' && \
	  bin/python $(QUIET_NUMPY) $(CURDIR)/examples/python/train.py

install: cpp
	cmake --install $(BUILD) --prefix "$(PREFIX)"

# timm's LAMB and LARS, ours against timm's, and the cost of clipping (bench/bench_timm.py)
bench-timm: build
	$(PY) bench/bench_timm.py $(BENCH_ARGS)

# Steps under FSDP2 on 2 processes, ours against the reference (bench/bench_fsdp2.py)
bench-fsdp2: build
	OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --standalone --nproc_per_node 2 bench/bench_fsdp2.py $(BENCH_ARGS)

# Benchmark (bench/bench.py; under 10 minutes on 2 idle cores): make bench BENCH_ARGS="--quick --workloads small-3000"
bench: build
	@grep -q holocron_bench $(BUILD)/build.ninja || cmake -S . -B $(BUILD) >/dev/null
	cmake --build $(BUILD) -j2 --target holocron_bench
	$(PY) bench/bench.py --bin $(BUILD)/bench/holocron_bench $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-zero-offload
	OMP_NUM_THREADS=2 $(PY) bench/bench_torchao_offload.py

# The ZeRO-Offload step against DeepSpeedCPUAdam (which DeepSpeed JIT-compiles on first use).
bench-zero-offload: build
	OMP_NUM_THREADS=2 DS_ACCELERATOR=cpu $(PY) bench/bench_zero_offload.py $(ZERO_OFFLOAD_ARGS)

clean:
	rm -rf $(BUILD) python/holocron_optim/lib
