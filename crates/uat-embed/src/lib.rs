//! uat-embed: see the crate description and ARCHITECTURE.md.
