# The two commands a newcomer needs (README): `make quickstart` and `make test`.
# Both create/refresh the project's virtual environment at .venv/ first (scripts/install.sh).
.PHONY: install quickstart test lint

install:
	@bash scripts/install.sh

quickstart: install
	.venv/bin/dare run recipes/quickstart.yaml

test: install
	.venv/bin/python -m pytest -q -n 3 --dist loadgroup

lint: install
	.venv/bin/ruff check dare rewards evals tests benchmarks
	.venv/bin/ruff format --check dare rewards evals tests benchmarks
