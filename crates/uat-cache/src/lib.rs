//! uat-cache: see the crate description and ARCHITECTURE.md.
