//! The server's integration tests: one binary, one module per subsystem.

// Helpers outside `#[test]` functions are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a failed test"
)]

mod auth;
mod cache;
mod common;
mod completions;
mod dashboard;
mod embeddings;
mod gateway;
mod gateway_params;
mod gateway_routing;
mod gateway_streams;
mod memory;
mod responses;
mod spend;
mod vector;
