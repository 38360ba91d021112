# floe — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# The Lambda's architecture for `make lambda` and `make lambda-smoke`: x86_64 or arm64.
ARCH ?= x86_64

.PHONY: help install components build demo test test-unit test-integration test-terraform lambda lambda-smoke coverage lint fmt bench bench-lambda stack-up stack-down stack-status clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## Install the dev stack's programs (tansu, fakesnow, PostgreSQL, Debezium, WASM toolchain); idempotent
	dev/install.sh

components: ## Build the default WASM components into target/components/ and the examples into target/components/examples/
	dev/install.sh base wasm js
	functions/build.sh

build: components ## Build floe (dev profile: dependencies optimised) with its components embedded
	$(CARGO) build --workspace --bins --tests

demo: install build ## Demo: start the stack, apply a sample workload to PostgreSQL, run floe until caught up, print the target tables and stats
	dev/demo.sh

test-unit: components ## Unit tests (no external services)
	$(CARGO) test --workspace

# The integration tests are the workspace's #[ignore]d tests (tests/all and the Snowflake
# client's fakesnow tests), run with the same package selection as `build`, so cargo
# reuses its artifacts instead of rebuilding the dependencies with other features.
test-integration: install build ## Integration tests against the real stack (tansu, fakesnow, PostgreSQL, Debezium)
	dev/with-stack.sh $(CARGO) test --workspace -- --ignored --test-threads=1

test: install build ## All tests: unit, integration against the real stack, then the Terraform module's
	$(CARGO) test --workspace
	python3 dev/registry/test_registry.py
	dev/with-stack.sh $(CARGO) test --workspace -- --ignored --test-threads=1
	$(MAKE) test-terraform

test-terraform: ## Terraform module: fmt, checkov, structural tests
	dev/install.sh terraform
	terraform/tests/run.sh

lambda: components ## Build the Lambda deployment zip (release bootstrap + precompiled components) into target/lambda/<arch>/ (ARCH=x86_64 by default; ARCH=arm64 cross-builds it)
	dev/lambda.sh $(ARCH)

lambda-smoke: install build lambda ## Runtime API tests against the zip's bootstrap and components with the dev stack (ARCH=arm64: under qemu-aarch64-static)
	dev/lambda.sh smoke $(ARCH)

coverage: install components ## Line coverage of the unit and integration tests (cargo-llvm-cov; summary and HTML in target/coverage/)
	dev/install.sh coverage
	dev/coverage.sh

lint: components ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: install components ## Benchmarks (see docs/benchmarks.md); not a test
	dev/bench.sh

bench-lambda: install build lambda ## Lambda benchmark: zip size, cold start, warm 1,000-record invocations, sink none and the emulator (ARCH as for lambda)
	dev/bench-lambda.sh $(ARCH)

stack-up: install ## Start the dev stack and print its environment
	dev/stack.sh start
	dev/stack.sh env

stack-down: ## Stop the dev stack
	dev/stack.sh stop

stack-status: ## Show what the dev stack is running
	dev/stack.sh status

clean: ## Stop the dev stack, delete its runtime state and the build output
	dev/stack.sh clean
	$(CARGO) clean
