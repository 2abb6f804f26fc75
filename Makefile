# The two commands of the README. Everything else is a helper they call.
.PHONY: demo demo-stop test lint bootstrap lock bench

bootstrap:
	@deploy/bootstrap.sh

demo: bootstrap
	.venv/bin/heatwatch demo

# a demo left behind (its terminal killed): stop what .demo/demo.pid lists
demo-stop:
	.venv/bin/heatwatch demo --stop

test: bootstrap lint
	.venv/bin/python -m pytest -q

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy

lock:
	python3 -m venv /tmp/heatwatch-lock && /tmp/heatwatch-lock/bin/pip install -q -e '.[dev]' \
	  && { echo '# Exact versions for every environment (make installs these). Regenerate: make lock'; \
	     /tmp/heatwatch-lock/bin/pip freeze --exclude heatwatch; } > requirements.lock
