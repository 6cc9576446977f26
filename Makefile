# attnserve: the project's front door. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-latest lock lint format train evaluate clean protos prometheus chromium bench \
	bench-quick soak fuzz

install: $(STAMP)

# Exactly what requirements/dev.txt pins, every file checked against its sha256 (the lock: see `lock`),
# then attnserve and attnserve-demo (demo/: the demo weights and training code), editable, built with the
# locked setuptools. Re-installs when the lock changes.
$(STAMP): pyproject.toml demo/pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . -e ./demo
	$(PY) -m pip check
	touch $@

# The lock: requirements/dev.txt resolves the whole environment (every extra but gpu: what `make install`
# and CI use); the other files are subsets of it, pinned alike: serve.txt (the serving image),
# export.txt (+ torch and the exporter), gpu.txt (serve with onnxruntime-gpu in place of onnxruntime).
# attnserve-demo (demo/) asks for nothing beyond attnserve[export].
# `make lock` follows pyproject.toml, changing as few pins as it can; `make lock UPGRADE=1` moves every
# package to its newest allowed release.
COMPILE = $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-find-links \
	--no-emit-index-url --build-deps-for wheel pyproject.toml
lock: install
	$(COMPILE) --allow-unsafe --extra server --extra export --extra dev $(if $(UPGRADE),--upgrade) \
		-o requirements/dev.txt
	$(COMPILE) --allow-unsafe --extra server -c requirements/dev.txt -o requirements/serve.txt
	$(COMPILE) --allow-unsafe --extra server --extra export -c requirements/dev.txt -o requirements/export.txt
	$(COMPILE) --allow-unsafe --extra gpu -c requirements/dev.txt -o requirements/gpu.txt

# The suite against the newest releases pyproject.toml allows (no lock), in its own venv: run it now and
# then to see an upstream release break us before users do. Lint stays with the locked ruff.
LATEST := .venv-latest
test-latest: prometheus chromium
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[server,export,dev]' -e ./demo
	$(LATEST)/bin/pip list --format freeze > $(LATEST)/versions.txt
	ATTNSERVE_UNLOCKED=1 $(LATEST)/bin/python -m pytest -p no:cacheprovider

MODEL_REPOSITORY ?= model_repository

# Export the demo models into the repository (those already there are left alone), then serve it:
# gRPC on :50051; HTTP on :8000 (the explorer page at http://localhost:8000/, the Open Inference
# Protocol's REST API and the vision API in JSON); Prometheus metrics on :9464
# (attnserve serve --help for every setting).
run: install
	$(VENV)/bin/attnserve export --demo --skip-existing --repository $(MODEL_REPOSITORY)
	$(VENV)/bin/attnserve serve --repository $(MODEL_REPOSITORY)

# The metrics tests run Debian's Prometheus and promtool on loopback, the explorer page's test Debian's
# headless Chromium through its ChromeDriver; each installed here when missing.
test: lint prometheus chromium
	$(PY) -m pytest

prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Retrain the demo models into demo/weights/ (tens of minutes per run on 2 CPU cores; about four hours
# in all). A classifier from scratch sits near chance for its first ~400 steps (a global label, an
# object anywhere in clutter), so both classifiers continue from one 1000-step CBAM warm-up run: the ECA
# model takes the warm-up's convolutions (its attention modules are its own), CBAM takes more stages at
# lower rates. The ViT is a hybrid whose ResNet stem starts from CBAM's convolutions (before the last
# stage), so its transformer blocks learn on features that already see shapes; the FCOS detector starts
# from the HAR-Net detector's backbone and FPN. The classifiers end with a "broad" stage (1200–2500 steps
# on 20000–30000 fresh scenes of the full training style) and a multi-scale one (each batch resized to
# 80–120 px, so the filters meet each relative size at several sizes in pixels). Both detectors learn
# their spatial attention guided by the boxes (demo/train.py: mask-guided attention).
# The shipped weights went through these stages once: the CNNs' first ones on earlier, narrower scene
# generators, the detector's before its attention was guided, the classifiers' last on today's; this
# recipe runs every stage on today's. Every stage draws its scenes from one seed (so later stages see
# the first ones' scenes again) except the classifiers' last, on fresh ones (--data-seed 11 and up): the
# first of those took CBAM from 0.893 to 0.930 held-out and 0.806 to 0.838 shifted. CBAM's and the
# ViT's last stages add heavier sensor noise and colour casts on the fly (--photometric: demo/train.py),
# which took CBAM from 0.930 / 0.838 (held-out / shifted top-1) to 0.928 / 0.866 and the ViT from
# 0.923 / 0.804 to 0.930 / 0.852 (docs/models.md).
train: install
	$(PY) -m attnserve.demo.train harnet_detector --out runs/harnet_base.pt
	$(PY) -m attnserve.demo.train harnet_detector --init runs/harnet_base.pt --steps 1200 --lr 1.5e-3 --seed 3 \
		--out runs/harnet_stage2.pt
	$(PY) -m attnserve.demo.train harnet_detector --init runs/harnet_stage2.pt --steps 1200 --lr 1.5e-3 --seed 4
	$(PY) -m attnserve.demo.train fcos_detector --init demo/weights/harnet_detector.pt --steps 2000 --lr 2e-3 --seed 5
	$(PY) -m attnserve.demo.train cbam_classifier --out runs/cbam_warmup.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_warmup.pt --steps 1200 --lr 2e-3 --out runs/cbam_stage2.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_stage2.pt --steps 800 --lr 1e-3 --seed 1 --out runs/cbam_stage3.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_stage3.pt --steps 1200 --lr 1e-3 --seed 2 --out runs/cbam_stage4.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_stage4.pt --steps 1500 --lr 2e-3 --seed 3 --train-size 20000 \
		--out runs/cbam_broad.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_broad.pt --steps 2000 --lr 1.5e-3 --seed 4 --train-size 20000 \
		--resolutions 80 120 --out runs/cbam_multiscale.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_multiscale.pt --steps 3000 --lr 1e-3 --seed 7 \
		--train-size 40000 --resolutions 80 120 --data-seed 11 --out runs/cbam_fresh.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_fresh.pt --steps 2000 --lr 7e-4 --seed 9 \
		--train-size 40000 --resolutions 80 120 --data-seed 12 --photometric --out runs/cbam_photometric.pt
	$(PY) -m attnserve.demo.train cbam_classifier --init runs/cbam_photometric.pt --steps 800 --lr 3e-4 --seed 10 \
		--train-size 30000 --resolutions 80 120 --data-seed 13 --photometric
	$(PY) -m attnserve.demo.train eca_classifier --init runs/cbam_warmup.pt --steps 1200 --lr 2e-3 --out runs/eca_base.pt
	$(PY) -m attnserve.demo.train eca_classifier --init runs/eca_base.pt --steps 1200 --lr 2e-3 --seed 3 --train-size 20000 \
		--out runs/eca_broad.pt
	$(PY) -m attnserve.demo.train eca_classifier --init runs/eca_broad.pt --steps 2000 --lr 1.5e-3 --seed 4 --train-size 20000 \
		--resolutions 80 120 --out runs/eca_multiscale.pt
	$(PY) -m attnserve.demo.train eca_classifier --init runs/eca_multiscale.pt --steps 3000 --lr 1e-3 --seed 7 \
		--train-size 40000 --resolutions 80 120 --data-seed 11 --out runs/eca_fresh.pt
	$(PY) -m attnserve.demo.train eca_classifier --init runs/eca_fresh.pt --steps 2000 --lr 7e-4 --seed 8 \
		--train-size 40000 --resolutions 80 120 --data-seed 12
	$(PY) -m attnserve.demo.train vit_classifier --init runs/cbam_stage4.pt --steps 2500 --lr 1e-3 --weight-decay 0.05 \
		--train-size 30000 --out runs/vit_base.pt
	$(PY) -m attnserve.demo.train vit_classifier --init runs/vit_base.pt --steps 2500 --lr 7e-4 --weight-decay 0.05 \
		--seed 1 --train-size 30000 --out runs/vit_broad.pt
	$(PY) -m attnserve.demo.train vit_classifier --init runs/vit_broad.pt --steps 2500 --lr 5e-4 --weight-decay 0.05 \
		--seed 4 --train-size 30000 --resolutions 80 120 --out runs/vit_multiscale.pt
	$(PY) -m attnserve.demo.train vit_classifier --init runs/vit_multiscale.pt --steps 2500 --lr 5e-4 --weight-decay 0.05 \
		--seed 9 --train-size 30000 --resolutions 80 120 --data-seed 12 --photometric --out runs/vit_photometric.pt
	$(PY) -m attnserve.demo.train vit_classifier --init runs/vit_photometric.pt --steps 1000 --lr 2e-4 --weight-decay 0.05 \
		--seed 11 --train-size 20000 --resolutions 80 120 --data-seed 13 --photometric

# Re-measure the demo models on 1000 held-out and 1000 shifted scenes and rewrite docs/models.md.
evaluate: install
	$(PY) -m attnserve.demo.evaluate --write docs/models.md

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache *.egg-info test-artifacts

PROTOS := protos/attnserve/api/v1/vision.proto protos/attnserve/api/inference/v2/grpc_predict_v2.proto

# Benchmarks (docs/benchmarks.md): everything, with the peer server and the CBAM-ResNet-50; or a quick
# run of the demo classifier (a few minutes). Results in bench/results/; `bench` rewrites the docs table.
bench: install
	$(PY) -m bench --docs docs/benchmarks.md

bench-quick: install
	$(PY) -m bench --quick

# Coverage-guided fuzzing (fuzz/README.md): each harness 10 minutes on one core, carrying on past crashes;
# exits non-zero naming every input that crashed (each then becomes a file in fuzz/regressions/).
fuzz: install
	$(PY) -m fuzz all -fork=1 -ignore_crashes=1 -max_total_time=600

# Overload (1024 callers), a 60 s soak and SIGTERM under load, about 2 minutes; bench/results/soak.json
# (docs/service.md: Limits and security). SOAK_SECONDS=300 for the 5-minute soak.
SOAK_SECONDS ?= 60
soak: install
	$(PY) -m bench.soak --soak-seconds $(SOAK_SECONDS)

# Regenerate the gRPC code in attnserve/api/ from protos/ (a test fails when it is stale).
protos: install
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
