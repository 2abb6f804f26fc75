# The two commands of the README. Everything else is a helper they call.
.PHONY: demo test lint bootstrap lock bench

bootstrap:
	@deploy/bootstrap.sh

demo: bootstrap
	.venv/bin/heatwatch demo

test: bootstrap lint
	.venv/bin/python -m pytest -q

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy

lock:
	python3 -m venv /tmp/heatwatch-lock && /tmp/heatwatch-lock/bin/pip install -q -e '.[dev]' \
	  && { echo '# Exact versions for every environment (make installs these). Regenerate: make lock'; \
	     /tmp/heatwatch-lock/bin/pip freeze --exclude heatwatch; } > requirements.lock
