//! uat-memory: see the crate description and ARCHITECTURE.md.
