//! uat-router: see the crate description and ARCHITECTURE.md.
