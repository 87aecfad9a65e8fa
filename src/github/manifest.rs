//! The App manifest conversion of `setup github-app`.
