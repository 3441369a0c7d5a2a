//! Test kit for `uat`: fake upstreams that speak the real wire formats
//! (OpenAI, Ollama, Anthropic) on ephemeral ports, count their calls, record
//! what they received and can be told to fail; and an in-process harness
//! that serves an axum app on an ephemeral port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use uat_testkit::{Behavior, FakeUpstream, Wire};
//! let up = FakeUpstream::start(Wire::OpenAi, "a").await?;
//! up.push(Behavior::Status(500)); // the next chat call fails, later ones succeed
//! let base_url = up.base_url();   // put this in a [[providers]] entry
//! # Ok(()) }
//! ```

mod fake;
mod harness;
mod http1;

pub use fake::{Behavior, FakeUpstream, Recorded, Wire};
pub use harness::TestServer;
