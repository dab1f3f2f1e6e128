# The verbs developers and CI share. `make test` is what .ci/run calls.
SHELL := /bin/bash
CARGO ?= cargo
STACK_ENV := deploy/local/stack.env

.PHONY: all build release up down status lint fmt test test-unit test-int test-web browser-deps run run-stack bench bench-e2e bench-churn bench-limits bench-peers crash fuzz clean help image compose-up compose-down validate-deploy

all: build

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## debug build
	$(CARGO) build --all-targets

release: ## optimised binary at target/release/nexxus-worker
	$(CARGO) build --release --bin nexxus-worker

up: ## install on first use and start Kafka, Cassandra and Redis on 127.0.0.1 (idempotent)
	deploy/local/up.sh

down: ## stop the local stack (data kept; deploy/local/down.sh --purge drops it)
	deploy/local/down.sh

status: ## what the local stack runs
	deploy/local/status.sh

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test-unit: ## tests that need no server
	$(CARGO) test --lib

test-int: up browser-deps ## integration tests against the real local stack
	set -a && source $(STACK_ENV) && set +a && $(CARGO) test --tests -- --test-threads=4

validate-deploy: ## helm lint/template, kubeconform -strict, docker compose config (installs the tools on first use)
	NEXXUS_REQUIRE_COMPOSE=1 deploy/validate.sh

image: ## container image nexxus-worker:local (Docker with BuildKit)
	docker build -f deploy/docker/Dockerfile -t nexxus-worker:local .

compose-up: ## everything in Docker: Kafka, ScyllaDB, Redis, topics, every role
	docker compose -f deploy/compose/compose.yaml up -d --build

compose-down: ## stop the Compose stack and drop its data
	docker compose -f deploy/compose/compose.yaml down -v

browser-deps: ## Debian's chromium and the npm packages of tests/web (idempotent)
	deploy/local/browser.sh

test-web: browser-deps ## unit tests of web/client.js (node --test)
	cd tests/web && npm test

test: lint validate-deploy up test-web ## everything: lint, deployment manifests, client.js, unit and integration tests against real servers (browser included), benches once
	$(CARGO) test --bench model
	set -a && source $(STACK_ENV) && set +a && $(CARGO) test --lib --tests -- --test-threads=4

run: release ## the main job: -t all on embedded defaults with the demo page on http://127.0.0.1:8080 (see README)
	deploy/local/run.sh

run-stack: release ## every role as its own process against the real local Kafka, Cassandra and Redis
	deploy/local/run-stack.sh

bench: ## criterion micro-benchmarks
	$(CARGO) bench --bench model

bench-e2e: ## the load tool against the local stack (every role its own process) and against -t all (BENCHMARKS.md)
	deploy/local/bench-e2e.sh stack
	deploy/local/bench-e2e.sh all

bench-churn: ## snapshot and resume: clients dropping and resuming under load, snapshot time of 10k and 100k objects; stack and -t all (BENCHMARKS.md)
	deploy/local/bench-churn.sh stack
	deploy/local/bench-churn.sh all

bench-limits: ## what Kafka and Cassandra alone do with the workers' clients, three runs (BENCHMARKS.md, "Dependency limits")
	deploy/local/bench-limits.sh

bench-peers: ## side by side with Centrifugo: fan-out and idle memory (BENCHMARKS.md)
	deploy/local/bench-peers.sh

crash: ## the crash test at full size: every role SIGKILLed in turn and a broker restart under load, 0 lost, 0 duplicates, exact state (deploy/local/crash.sh)
	deploy/local/crash.sh

fuzz: ## bounded fuzzing of message decoding (needs nightly + cargo-fuzz; see fuzz/run.sh)
	fuzz/run.sh

clean:
	$(CARGO) clean
