# Everyday commands. `make test` is the test command of the README and CI.
.PHONY: run test check fmt lint doc bench build

run:
	cargo run --release -- serve

test:
	cargo test --locked

check: fmt-check lint doc test

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --all-targets --locked -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

build:
	cargo build --release --locked

bench:
	bench/run
