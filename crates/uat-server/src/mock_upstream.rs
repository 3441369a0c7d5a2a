//! A zero-dependency OpenAI-compatible upstream used by `uat loadtest` to
//! measure the gateway's overhead (direct vs. through `uat`).
//!
//! Placeholder until the load-test work lands.
