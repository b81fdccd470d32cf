# mdship: `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
MDSHIP := $(VENV)/bin/mdship
STAMP  := $(VENV)/.installed

.PHONY: venv demo runner runner-arm64 test test-deps test-slow bench clean

venv: $(STAMP)

# The venv is rebuilt only when pyproject.toml changes. torch==2.13.0 (CPU) is pinned in pyproject.
$(STAMP): pyproject.toml
	bash tools/install_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

PROMPT := a large red circle on a blue background, top left
RUNNER := artifacts/runner-build/mdship-runner

# Build the default recipe (embedded md-shapes checkpoint -> XNNPACK bundle), then generate with the C++ runner.
demo: venv runner
	$(MDSHIP) build recipes/default.yaml
	$(MDSHIP) run artifacts/default/xnnpack --prompt "$(PROMPT)" --seed 0 --out artifacts/demo/python-runner.png
	$(RUNNER) artifacts/default/xnnpack --prompt "$(PROMPT)" --seed 0 --out artifacts/demo/cpp-runner.png
	@echo "demo image: $(CURDIR)/artifacts/demo/cpp-runner.png"

# The C++ runner, built against the executorch pip wheel's CMake package.
runner: venv
	cmake -S runner -B artifacts/runner-build -DCMAKE_BUILD_TYPE=Release -DMDSHIP_BUILD_RUNNER=ON \
		-DCMAKE_PREFIX_PATH=$$($(PY) -c "import executorch, pathlib; print(pathlib.Path(list(executorch.__path__)[0]) / 'share' / 'cmake')") > /dev/null
	cmake --build artifacts/runner-build --target mdship-runner -j2

# The C++ runner cross-compiled for arm64 Linux, run under qemu-aarch64 (`mdship verify BUNDLE --device arm64-qemu`).
# Installs qemu-user, the cross compiler, Debian's arm64 libssl and the aarch64 executorch wheel (into .cache/arm64).
runner-arm64: venv
	PY=$(PY) bash tools/build_runner_arm64.sh

test: venv test-deps
	$(PY) -m pytest -q -m "not slow" --timeout 900 --durations=25

test-slow: venv test-deps
	$(PY) -m pytest -q -m slow --timeout 3600

# What tests need besides the venv (Debian's chromium for the report test); installs only what is missing.
test-deps:
	bash tools/install_test_deps.sh

# Build the XNNPACK bundles on builtin:shapes (cached), time both runners at 1 and 2 threads, one process per
# measurement; results in artifacts/bench/results.{json,md}. Extra flags: make bench BENCH_ARGS="--runs 2".
# Then the side-by-side suite (benchmarks/sidebyside.py: eager fp32, torch.compile, torchao int8, the XNNPACK fp32
# program, interleaved, with GEMM peaks) on the embedded default and on the paper-scale preset at 512 px; results in
# artifacts/bench/sidebyside*.{json,md}. Extra flags: SIDEBYSIDE_ARGS="--runs 3 --components vae_decoder".
SHAPES_SET = --set checkpoint=builtin:shapes --set resolution=null --set calibration.prompts=calibration/shapes-calib.txt \
	--set calibration.eval_prompts=calibration/shapes-eval.txt
bench: venv runner
	$(PY) tools/bench.py $(BENCH_ARGS)
	$(PY) -m benchmarks.sidebyside --checkpoint builtin:shapes --threads 1 2 --images 1 8 \
		--out artifacts/bench/sidebyside-default.json $(SIDEBYSIDE_ARGS)
	$(PY) -m benchmarks.sidebyside --preset mobilediffusion --resolution 512 --threads 1 2 \
		--components text_encoder vae_decoder --out artifacts/bench/sidebyside-paper.json $(SIDEBYSIDE_ARGS)
	# the paper UNet without an in-process XNNPACK lowering (~15 GB); its bundles come in with --bundle NAME=DIR
	$(PY) -m benchmarks.sidebyside --preset mobilediffusion --resolution 512 --threads 1 2 --components unet \
		--contenders eager_fp32 compile_fp32 torchao_int8 --out artifacts/bench/sidebyside-paper-unet.json \
		$(SIDEBYSIDE_ARGS)
	# build time of the shipped XNNPACK recipes on the embedded default, cold (empty cache) and no-op
	$(PY) -m benchmarks.builds recipes/default.yaml recipes/md-xnnpack-fp32.yaml recipes/md-xnnpack-fp16.yaml \
		recipes/md-xnnpack-w8a8.yaml recipes/md-xnnpack-8da4w.yaml $(SHAPES_SET) --out artifacts/bench/builds.json
	# the C++ runner's memory per bundle, loading vs running (paper-scale bundles: give their directories instead)
	$(PY) -m benchmarks.runner_memory artifacts/default/xnnpack artifacts/shapes/md-xnnpack-*/xnnpack \
		--out artifacts/bench/runner-memory.json

clean:
	rm -rf artifacts .pytest_cache
