# Everyday commands. `make test` is the test command of the README and CI.
.PHONY: run test check fmt lint bench build

run:
	cargo run --release -- serve

test:
	cargo test --locked

check: fmt-check lint test

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --all-targets --locked -- -D warnings

build:
	cargo build --release --locked

bench:
	bench/run
