# Two commands set everything up on a fresh machine:  make book  /  make test
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: book test lint test-lib test-notebooks test-from-scratch checkpoints bench clean handouts

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## make book: build the rendered book, executing every notebook in cpu mode (DIFFUSION_HEADLESS=1:
## no live widgets: a slider shows a sentence beside its static figure, no progress bars; see setup.headless)
book: $(STAMP)
	DIFFUSION_MODE=cpu DIFFUSION_HEADLESS=1 $(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "Open file://$(abspath _build/html/index.html)"

## make test: unit tests, diffusers cross-checks, quality gates, book build, every notebook in quick mode;
## TEST_WORKERS processes (pytest-xdist, one test file or notebook each, one torch thread each: on 2 CPU
## cores 2 workers took 635 s where one process with 2 threads took 780 s)
TEST_WORKERS ?= 2
test: $(STAMP) lint
	OMP_NUM_THREADS=1 DIFFUSION_MODE=quick $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests notebooks book/instructor_guide.ipynb --nbval-lax --durations=0 -q

## make test-from-scratch: every notebook in quick mode, going on with the models it trains instead of
## the shipped checkpoints (DIFFUSION_FROM_SCRATCH=1): the code paths of gpu mode, with tiny models, on a CPU
test-from-scratch: $(STAMP)
	OMP_NUM_THREADS=1 DIFFUSION_MODE=quick DIFFUSION_FROM_SCRATCH=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile notebooks --nbval-lax --durations=0 -q

## make lint: one style for the library, tests and notebooks (ruff reads .ipynb)
lint: $(STAMP)
	$(VENV)/bin/ruff check diffusion_lib tests notebooks book/instructor_guide.ipynb
	$(VENV)/bin/ruff format --check diffusion_lib tests notebooks book/instructor_guide.ipynb

test-lib: $(STAMP)
	$(PY) -m pytest tests -q

test-notebooks: $(STAMP)
	DIFFUSION_MODE=quick $(PY) -m pytest notebooks --nbval-lax --durations=0 -q

## make checkpoints: retrain every shipped checkpoint with its recipe (minutes on a GPU; on 2 CPU cores
## about 1 min for the evaluator, ~50 min for shapes-ddpm (8000 steps, then ~5 min of measuring),
## ~75 min for scenes-vae (6000 steps + the KL trade-off sweep), ~25 min for scenes-clip, ~2 h 20 min for
## scenes-ldm (6000 steps of batch 128 in SD's layout, ~113 min; then a 1,200-step decay, ~14 min, and the smaller
## budgets' decays, 1,050 steps, ~12 min) plus ~36 min measuring it, ~9 min for scenes-prior (+ ~60 min
## measuring), ~18 min for scenes-upsampler (+ ~4), ~49 min for scenes-decoder plus up to ~2 h measuring the
## whole mini DALL-E 2 (about 2,800 images at 200 prompts per group: 117 min beside other jobs); for Part IV ~10 min for scenes-lora (2500 steps in ~5 min, then ~5 min measuring),
## ~5 min for scenes-inversion (1500 steps in ~3 min), ~20 min for scenes-inpaint (3000 steps in ~15 min in SD's layout) plus ~3 min measuring,
## and ~20 min for scenes-controlnet (3000 steps in ~17 min) plus ~3 min measuring)
checkpoints: $(STAMP)
	$(PY) -m diffusion_lib.recipes all  # diffusion_lib.recipes.RECIPES, in order

## make handouts: student versions of every chapter (solutions removed) in _build/handouts;
## grade a class with: python -m diffusion_lib.classroom grade SUBMISSIONS (see the instructor guide)
handouts: $(STAMP)
	$(PY) -m diffusion_lib.classroom handouts --out _build/handouts

## make bench: time every notebook in quick mode
bench: $(STAMP)
	DIFFUSION_MODE=quick $(PY) -m pytest notebooks --nbval-lax --durations=0 -q

clean:
	rm -rf _build .pytest_cache
