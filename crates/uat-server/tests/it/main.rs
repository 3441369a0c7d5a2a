//! The server's integration tests: one binary, one module per subsystem.

mod common;
mod gateway;
mod vector;
mod embeddings;
mod memory;
mod cache;
