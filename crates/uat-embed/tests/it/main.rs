//! Integration tests of uat-embed (one binary, fast to link).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

mod admission;
mod agreement;
mod batching;
mod budget;
mod common;
mod estimate;
mod input;
mod loading;
mod pooling;
mod registry;
mod tiny;
