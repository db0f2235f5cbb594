//! The subcommands.

pub mod analyze;
pub mod table;
