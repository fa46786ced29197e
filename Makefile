# invoiced-connect: `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV      := .venv
SAM_VENV  := .venv-sam
PY        := $(VENV)/bin/python
SAM       := $(SAM_VENV)/bin/sam
# sam validate runs the SAM transform, which needs a region; no credentials.
REGION    ?= us-east-1
# make deploy: which [ENV.deploy.parameters] table of samconfig.toml to use.
ENV       ?= sandbox

NODE_EXAMPLE := examples/node

.PHONY: help install run test unit lint validate build bench mutate fuzz clean deploy deploy-guided screenshots

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml layers/invoiced_connect/requirements.txt
	@py=$$(scripts/find-python) && echo "creating $(VENV) with $$py" && "$$py" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(SAM_VENV)/.installed: requirements-sam.txt
	@py=$$(scripts/find-python) && "$$py" -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q -r requirements-sam.txt
	@touch $@

# The Node.js example client of the app API (AWS SDK for JavaScript v3, from its lockfile).
$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package.json $(NODE_EXAMPLE)/package-lock.json
	npm ci --prefix $(NODE_EXAMPLE) --no-audit --no-fund --loglevel=error
	@touch $@

# axe-core for the browser tests' accessibility checks (package.json at the root, from its lockfile).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed $(SAM_VENV)/.installed $(NODE_EXAMPLE)/node_modules/.installed node_modules/.installed ## Create the virtual environments (.venv, .venv-sam), the Node example's node_modules and axe-core's (node_modules)

run: $(VENV)/.installed ## Start the whole system on loopback and print a connect link (ARGS="--schedule-every 30")
	$(PY) -m local.stack $(ARGS)

validate: $(VENV)/.installed $(SAM_VENV)/.installed ## sam validate (runs the SAM transform) and cfn-lint
	SAM_CLI_TELEMETRY=0 $(SAM) validate --region $(REGION) --template template.yaml
	$(VENV)/bin/cfn-lint template.yaml

build: $(SAM_VENV)/.installed ## sam build, then bytecode for python3.13 if one is found (no Docker needed)
	SAM_CLI_TELEMETRY=0 PYTHON="$(CURDIR)/$(SAM_VENV)/bin/python" $(SAM) build --template template.yaml
	@scripts/compile-bytecode .aws-sam/build

lint: $(VENV)/.installed ## ruff over the code and tests; the import contracts (pyproject.toml [tool.importlinter])
	$(VENV)/bin/ruff check layers functions local tests bench examples tools
	$(VENV)/bin/lint-imports --no-cache

test: install lint validate ## Install everything, lint, check the template, run every test (browser included)
	@CHROMIUM_PATH=$$(scripts/ensure-chromium) || { if [ -n "$$CI" ]; then exit 1; fi; }; \
	  export CHROMIUM_PATH SAM_CLI="$(CURDIR)/$(SAM)"; \
	  $(PY) -m pytest

bench: $(VENV)/.installed build ## Measure cold start, size, first responses, the token lifecycle and the monthly cost (not part of test)
	$(PY) -m bench.coldstart
	$(PY) -m bench.firstresponse
	$(PY) -m bench.lifecycle --counts-out .local/bench/counts.json $(ARGS)
	$(PY) -m bench.cost --counts .local/bench/counts.json

# mutmut, pinned in its own requirements file: it is not needed by make test.
$(VENV)/.mutation-installed: $(VENV)/.installed tests/mutation/requirements.txt
	$(PY) -m pip install -q -r tests/mutation/requirements.txt
	@touch $@

mutate: $(VENV)/.mutation-installed ## Mutation testing (mutmut) of the modules with security and lifecycle promises; not part of test (MODULES="links pages" for some)
	$(PY) tests/mutation/run.py $(MODULES)

# atheris, pinned in its own requirements file: it is not needed by make test.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= links outcome cookies
$(VENV)/.fuzz-installed: $(VENV)/.installed tests/fuzz/requirements.txt
	$(PY) -m pip install -q -r tests/fuzz/requirements.txt
	@touch $@

fuzz: $(VENV)/.fuzz-installed ## Fuzz the link and cookie decoders (atheris), FUZZ_SECONDS=60 each; not part of test
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz $$target for $(FUZZ_SECONDS) s"; mkdir -p .local/fuzz/$$target; \
	  $(PY) tests/fuzz/fuzz_decoders.py $$target .local/fuzz/$$target tests/fuzz/corpus/$$target \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=.local/fuzz/ -print_final_stats=1 || exit $$?; \
	done

screenshots: $(VENV)/.installed ## Render every connect page (desktop and 360 px) with headless Chromium into docs/screenshots/
	@CHROMIUM_PATH=$$(scripts/ensure-chromium) && export CHROMIUM_PATH && $(PY) -m tests.support.screenshots

unit: $(VENV)/.installed ## Unit tests only (no network, no AWS)
	$(PY) -m pytest tests/unit -q

# deploy: check AWS credentials and region first (seconds, and before any
# build), then `make build`, then sam deploy with the environment's settings
# from samconfig.toml, then print what is left to do, from the stack's
# outputs. The region is passed on as --region because the SAM CLI (botocore)
# does not read AWS_REGION. $(1) is extra sam deploy options.
define deploy_steps
region=$$($(PY) -m invoiced_connect_tools.deployment preflight $(ENV)) || exit $$?; \
$(MAKE) --no-print-directory build || exit $$?; \
SAM_CLI_TELEMETRY=0 $(SAM) deploy --config-env $(ENV) --region "$$region" $(1) || exit $$?; \
$(PY) -m invoiced_connect_tools.deployment next-steps $(ENV) --program $(VENV)/bin/invoiced-connect
endef

deploy: $(VENV)/.installed $(SAM_VENV)/.installed ## Build and deploy ENV=sandbox (default) or ENV=production, then print the next steps
	@$(call deploy_steps,)

deploy-guided: $(VENV)/.installed $(SAM_VENV)/.installed ## The same with sam deploy --guided (asks for each setting; for a first deploy)
	@$(call deploy_steps,--guided)

clean: ## Remove build output and virtual environments
	rm -rf .aws-sam $(VENV) $(SAM_VENV) .local .pytest_cache .mutation $(NODE_EXAMPLE)/node_modules node_modules
