# lcron-pipelines: every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/local
REGISTRY ?= localhost:5000
IMAGE ?= lcron-pipelines
# <git sha>-<lock digest>, -dirty when the images' files differ from the commit (pipelines/images.py).
TAG ?= $(shell $(PY_SYS) -m pipelines.images tag 2>/dev/null || echo dev)
# The one image reference (docs/docker.md): image, push, pipeline, submit and test-docker all use it.
IMAGE_REF := $(if $(REGISTRY),$(REGISTRY)/)$(IMAGE):$(TAG)
GPU_IMAGE_REF := $(IMAGE_REF)-gpu
BASE_IMAGE ?= python:3.11-slim
LOCAL_BASE ?= lcron-base:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
# Compile-time resources per step (docs/pipeline.md): CPU_<STEP> / MEM_<STEP> requests, limits = request x LIMIT_FACTOR.
RESOURCES ?=
# Compile-time Kubernetes settings (docs/pipeline.md "Deploy on GKE / EKS"), e.g.
# K8S='--secret-env AWS_ACCESS_KEY_ID=s3-creds:access_key --retries 2 --label lcron.dev/git-sha=abc1234'.
K8S ?=
DOCKER_ROOT ?= runs/kfp-docker
EXPERIMENT ?= lcron
METHODS ?= all
STAGES ?= 2 3
# Pipeline (docs/pipeline.md): one run's method/stages, the KFP endpoint, GPU request, local roots.
METHOD ?= lcron
SEEDS ?= 1,2,3,4,5
# Extra pipeline parameters / runner options for submit and sweep-local, e.g.
# PARAMS='--no-local-defaults source=/data/RecFlow' (README: reproducing the paper's table).
PARAMS ?=
HOST ?=
VARIANT ?= cpu
ACCELERATOR ?= nvidia.com/gpu
ACCELERATOR_COUNT ?= 1
KFP_LOCAL_ROOT ?= runs/kfp-local
SWEEP_ROOT ?= runs/sweep-local
COMPARE_PATHS ?= runs
COMPARE_OUT ?= runs/compare
comma := ,
empty :=
space := $(empty) $(empty)

.DEFAULT_GOAL := help
.PHONY: help install run test bench pipeline submit sweep-local sweep-local-reference reference-table published-comparison compare image \
	image-gpu push lint clean base-image wheelhouse wheelhouse-gpu lock test-docker test-docker-gpu image-refs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PY_SYS) >/dev/null || { echo "need $(PY_SYS) (Python 3.11) on PATH"; exit 1; }
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[pipeline,dev,vertex]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install the project with its dependencies

run: $(STAMP) ## run the compiled pipeline locally (kfp.local) on the synthetic data; prints the report path
	$(PY) -m pipelines.run_local --pipeline-root $(KFP_LOCAL_ROOT)

pipeline: $(STAMP) ## compile the KFP pipeline: build/cascade-cpu.yaml and build/cascade-gpu.yaml
	$(PY) -m pipelines.compile --out build --image-ref $(IMAGE_REF) --pushed build/images.json \
		--accelerator-type $(ACCELERATOR) --accelerator-count $(ACCELERATOR_COUNT) $(RESOURCES) $(K8S)

submit: pipeline ## submit runs to KFP: make submit HOST=http://... METHOD=lcron STAGES=2 [SEEDS=1,2,3]
	@test -n "$(HOST)" || { echo "set HOST to the KFP API endpoint, e.g. make submit HOST=http://localhost:8080"; exit 2; }
	$(PY) -m pipelines.submit --host $(HOST) --experiment $(EXPERIMENT) --package build/cascade-$(VARIANT).yaml \
		--methods $(subst $(space),$(comma),$(strip $(METHOD))) --stages $(subst $(space),$(comma),$(strip $(STAGES))) \
		--seeds $(SEEDS) $(PARAMS)

sweep-local: $(STAMP) ## run METHODS (default all) x STAGES locally (synthetic data, one seed unless PARAMS), resumable, then compare
	$(PY) -m pipelines.sweep_local --root $(SWEEP_ROOT) \
		--methods $(subst $(space),$(comma),$(strip $(METHODS))) --stages $(subst $(space),$(comma),$(strip $(STAGES))) \
		$(PARAMS)

sweep-local-reference: $(STAMP) ## sweep-local in reference mode (reference_quirks=true at every step) into SWEEP_ROOT-reference
	$(PY) -m pipelines.sweep_local --root $(SWEEP_ROOT)-reference \
		--methods $(subst $(space),$(comma),$(strip $(METHODS))) --stages $(subst $(space),$(comma),$(strip $(STAGES))) \
		reference_quirks=true

reference-table: $(STAMP) ## the faithful-vs-reference table of docs/reference.md (8 methods x 2 settings x 2 modes x 2 seeds)
	$(PY) -m lcron.reference.table --out runs/reference-table

published-comparison: $(STAMP) ## reference mode vs the published code (PUBLISHED=<kwai/LCRON checkout or git dir>) on one synthetic data set
	@test -n "$(PUBLISHED)" || { echo "give PUBLISHED=<a checkout or bare git directory of github.com/kwai/LCRON>"; exit 2; }
	$(PY) bench/published_comparison.py --published "$(PUBLISHED)" --out runs/published-comparison

compare: $(STAMP) ## compare every evaluated run under COMPARE_PATHS (default runs/) into runs/compare
	$(PY) -m lcron compare $(COMPARE_PATHS) --out $(COMPARE_OUT)

image-refs: ## print the CPU and GPU image references that image, push and pipeline use
	@echo $(IMAGE_REF); echo $(GPU_IMAGE_REF)

base-image: ## make the local Debian bookworm base LOCAL_BASE (for when python:3.11-slim cannot be pulled)
	docker/base-image.sh $(LOCAL_BASE) $(DEBIAN_MIRROR)

lock: $(STAMP) ## resolve both images' packages from pyproject.toml into docker/lock-{cpu,gpu}.txt (with sha256s)
	$(PY) docker/lock.py cpu gpu

wheelhouse: ## the files of docker/lock-cpu.txt into wheelhouse/, hash-checked (the image build then needs no network)
	docker/wheelhouse.sh wheelhouse $(PY_SYS) cpu

wheelhouse-gpu: ## the files of docker/lock-gpu.txt (CUDA torch, its CUDA 13 wheels) into wheelhouse-gpu/, several GB
	docker/wheelhouse.sh wheelhouse-gpu $(PY_SYS) gpu

image: wheelhouse ## build the CPU image IMAGE_REF [BASE_IMAGE=lcron-base:bookworm after make base-image]
	docker/build.sh docker/Dockerfile $(IMAGE_REF) $(BASE_IMAGE) none wheelhouse

image-gpu: wheelhouse-gpu ## build the GPU image IMAGE_REF-gpu from the CPU image's base and wheels (docs/docker.md)
	docker/build.sh docker/Dockerfile.gpu $(GPU_IMAGE_REF) $(BASE_IMAGE) host wheelhouse-gpu

test-docker-gpu: $(STAMP) image-gpu ## build the GPU image and check it: CUDA 13 everywhere, a clear error without a GPU
	LCRON_TEST_GPU_IMAGE=$(GPU_IMAGE_REF) $(PY) -m pytest -q -p no:cacheprovider -m docker tests/pipeline/test_docker_gpu_image.py

push: ## push both images to REGISTRY (a clean tree only, or ALLOW_DIRTY=1) and record their digests for make pipeline
	@test -n "$(ALLOW_DIRTY)" || $(PY_SYS) -m pipelines.images check-clean
	$(MAKE) image image-gpu
	docker push $(IMAGE_REF)
	docker push $(GPU_IMAGE_REF)
	$(PY_SYS) -m pipelines.images record $(IMAGE_REF) $(GPU_IMAGE_REF)

test-docker: $(STAMP) image ## build the CPU image, then run it: --help, a preprocess step, the whole pipeline (DockerRunner)
	LCRON_TEST_IMAGE=$(IMAGE_REF) $(PY) -m pytest -q -p no:cacheprovider -m docker tests/pipeline/test_docker_engine.py

lint: $(STAMP) ## hadolint both Dockerfiles and check that the pipeline compiles
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu
	$(PY) -m pipelines.compile --out build/lint --tag lint >/dev/null
	@echo "lint: Dockerfiles clean, pipeline compiles"

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

bench: $(STAMP) ## print the benchmark table (build/bench.json)
	$(PY) -m lcron bench --json build/bench.json

clean: ## remove build outputs and local runs (keeps .venv)
	rm -rf build runs .pytest_cache .hypothesis
