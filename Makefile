.PHONY: setup train test test-unit lint bench
setup:
	bash scripts/setup.sh
train: setup
	OMP_NUM_THREADS=1 deepspeed --num_gpus 2 launch/train.py
test: setup
	python -m pytest
test-unit:
	python -m pytest tests/unit
lint:
	ruff check . && ruff format --check .
bench:
	OMP_NUM_THREADS=1 python benchmarks/overhead.py
