//! The subcommands.

pub mod analyze;
pub mod bench;
pub mod compare;
pub mod demo;
pub mod simulate;
pub mod table;
