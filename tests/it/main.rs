//! The integration tests: the built relay, driven over real sockets, with a
//! real SQLite file and a fake GitHub.

// The fake GitHub server, validating every request against GitHub's OpenAPI description.
mod fake_github;
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
// The relay as a GitHub App: tokens, renewal, scopes, and workflow run details.
mod app;
