//! uat-types: see the crate description and ARCHITECTURE.md.
