//! The integration tests: the built relay, driven over real sockets, with a
//! real SQLite file and a fake GitHub.

// The fake GitHub server, validating every request against GitHub's OpenAPI description.
mod fake_github;
// The fake itself: it refuses what GitHub refuses, and says so.
mod fake;
// spawn_app() and the helpers every test uses.
mod helpers;

// Sender verification and every status of the webhook endpoint.
mod ingest;
// What reaches GitHub: rendering, retries, failures with their explanations.
mod dispatch;
// Crashes, restarts and graceful shutdown: nothing accepted is lost.
mod durability;
// The command line: check, render, deliveries, redeliver.
mod cli;
// Operating it: debounce, the admin API, redelivery.
mod operations;
// Repository rules: module docs in src/, configuration examples in the docs that load.
mod tidy;
// The sender recipes in docs/: every routes block loads and runs its signed samples.
mod recipes;
// Sender schemes through the library: samples, forgeries, SNS, networks, property tests.
mod senders;
// The relay as a GitHub App: tokens, renewal, scopes, and workflow run details.
mod app;
// check --online and serve's start-up preflight: why a repository cannot receive dispatches.
mod preflight;
// `setup github-app`: the manifest flow in headless Chromium against the fake GitHub.
mod setup;
