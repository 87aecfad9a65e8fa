//! The reachability check of `check --online` and `serve`.
