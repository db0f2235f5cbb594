//! The subcommands.

pub mod analyze;
pub mod simulate;
pub mod table;
