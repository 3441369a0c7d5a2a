//! Integration tests of uat-embed (one binary, fast to link).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

mod agreement;
mod batching;
mod budget;
mod common;
mod input;
mod loading;
mod registry;
mod tiny;
