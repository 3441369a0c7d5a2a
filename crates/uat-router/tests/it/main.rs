//! The router's integration tests: the providers against the test kit's
//! fake upstreams over real HTTP, through the public API.

// Helpers outside `#[test]` functions are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a failed test"
)]

mod completions;
