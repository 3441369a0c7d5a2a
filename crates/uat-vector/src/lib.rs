//! uat-vector: see the crate description and ARCHITECTURE.md.
