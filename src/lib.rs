//! dispatch-relay turns incoming webhooks into GitHub `repository_dispatch`
//! and `workflow_dispatch` events, durably.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//!
//! - pure core: `config` (routes.yaml → validated `Config`), `template`
//!   (typed minijinja rendering), `routing` (route + request → GitHub
//!   requests), `verify` (sender authentication), `inbound` (body parsing,
//!   context, stored form), `dispatch::retry` (classification), `text`
//!   (quoting in messages);
//! - edges: `ingress` (actix-web), `store` (SQLite), `github` and `notify`
//!   (reqwest);
//! - glue: `dispatch` (the worker), `redeliver`, `telemetry`, `cli`.

pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod github;
pub mod inbound;
pub mod ingress;
pub mod notify;
pub mod redeliver;
pub mod routing;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod text;
pub mod verify;
