# Entry points for users and CI. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast test-unit test-e2e k8s-plane images lint protos bench fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# tensorflow-serving-api declares a dependency on the full `tensorflow` wheel; the runtime uses
# tensorflow-cpu (same package, smaller), so the API stubs are installed without dependencies.
setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --no-deps
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps tensorflow-serving-api==2.21.0

demo: setup
	$(BIN)/deeprec-runtime demo

# The whole suite, every tier of tests/: unit, integration (real TensorFlow, gRPC, redis-server),
# static, faults, fuzz and end-to-end (a real Kubernetes control plane built by scripts/k8s-plane.sh
# into a cache folder, and a real node running the images of scripts/images.sh: needs root).
test: setup k8s-plane images
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Every tier but tests/e2e (no control plane needed).
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests -m 'not e2e'

# tests/unit only: fakes, no TensorFlow session, no servers (seconds).
test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

k8s-plane:
	bash scripts/k8s-plane.sh build

# Both images from the Dockerfiles (buildah, root), cached by their inputs; the pause image's
# source comes with the Kubernetes module the plane build downloads.
images: k8s-plane
	bash scripts/images.sh build

# ruff and mypy, configured in pyproject.toml, and the import contracts in .importlinter
# (tests/static/test_lint.py and tests/static/test_architecture.py run them in the suite).
lint: setup
	$(BIN)/ruff check runtime operator proto tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# proto/deeprec_api/predict_pb2.py(i) from proto/deeprec/serving/predict.proto.
protos: setup
	bash scripts/gen-protos.sh

# Longer fuzzing runs than CI's 20 s per target: the Python decoders (atheris) and the native
# request decoding (libFuzzer with ASan and UBSan; needs clang libclang-rt-14-dev).
fuzz: setup
	FUZZ_SECONDS=600 $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz -s

# simple-tensorflow-serving, the peer the serving bench compares with, in a venv of its own
# (it needs an older Flask than anything here).
STFS_VENV ?= .cache/stfs-venv
$(STFS_VENV)/bin/simple_tensorflow_serving:
	$(PY) -m venv $(STFS_VENV)
	$(STFS_VENV)/bin/pip install -q tensorflow-cpu==2.21.0 simple-tensorflow-serving 'flask<2.3' 'werkzeug<2.3'

bench: setup $(STFS_VENV)/bin/simple_tensorflow_serving
	STFS_VENV=$(STFS_VENV) $(BIN)/python bench/serving_bench.py
	$(BIN)/python bench/lookup_bench.py
