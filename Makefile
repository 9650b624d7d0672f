# astrobio-train: `make train` runs the default job, `make test` runs the suite. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
EXTRAS ?= train,s3,wandb,tensorboard,graph,chem,metabolic,science,text,climate,lora,deepspeed,gpu,tune,test
# torch must come from the CPU wheel: a local wheel folder (PIP_FIND_LINKS) when the machine has one,
# else PyTorch's CPU index. Installing it first keeps pip from pulling CUDA packages.
TORCH_SPEC := torch==2.13.0
TORCH_SOURCE := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--index-url https://download.pytorch.org/whl/cpu)
UV := $(BIN)/uv
UV_ENV := $(if $(PIP_FIND_LINKS),UV_FIND_LINKS=$(PIP_FIND_LINKS))
export PATH := $(TOOLS):$(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv tools train test lint bench manifests images clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(UV_ENV) $(UV) pip install --python $(BIN)/python $(TORCH_SOURCE) $(TORCH_SPEC)
	$(UV_ENV) $(UV) pip install --python $(BIN)/python -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed  ## create .venv with the whole stack (CPU torch first)

tools:  ## install what the tests talk to: helm, promtool/prometheus, pushgateway, Ceph RGW (S3), PostgreSQL, gfortran
	bash tests/tools/install-all.sh $(CURDIR)/.tools

train: venv  ## import the bundled real snapshots and train the planets model on CPU
	$(BIN)/astrobio-data run exoplanet-catalogue --from-snapshot
	$(BIN)/astrobio-data run nasa-exoplanets --from-snapshot
	$(BIN)/astrobio-train run -c configs/planets.yaml

# test files run side by side, each whole on one worker (its module fixtures are made once); 0 = one process
TEST_WORKERS ?= 2
test: venv tools  ## lint and run the whole test suite (TEST_WORKERS=2 processes)
	$(BIN)/ruff check trainer datajobs tests bench
	$(BIN)/python -m pytest -q -ra --durations=30 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: venv  ## ruff
	$(BIN)/ruff check trainer datajobs tests bench
	$(BIN)/ruff format --check trainer datajobs tests bench

bench: venv tools  ## benchmarks; results go to docs/benchmarks.md by hand
	$(BIN)/python -m bench.trainer_overhead
	$(BIN)/python -m bench.trainer_overhead --steps 300 --set model.hidden=640
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.datajobs
	$(BIN)/python -m bench.predict
	$(BIN)/python -m bench.checkpoint_async
	$(BIN)/python -m bench.chaos

manifests: tools  ## render manifests/ from the chart
	bash charts/render-manifests.sh

images:  ## build the container images where Docker exists (BuildKit reads images/*/Dockerfile.dockerignore)
	@if ! docker info >/dev/null 2>&1; then echo "no Docker daemon reachable: no images built"; else \
	  DOCKER_BUILDKIT=1 docker build -f images/trainer/Dockerfile -t astrobio-train/trainer:dev . && \
	  DOCKER_BUILDKIT=1 docker build -f images/datajobs/Dockerfile -t astrobio-train/datajobs:dev .; fi

clean:
	rm -rf $(VENV) .tools runs data .pytest_cache
