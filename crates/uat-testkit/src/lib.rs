//! uat-testkit: see the crate description and ARCHITECTURE.md.
