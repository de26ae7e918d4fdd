//! One module per group of subcommands.

pub mod bench;
pub mod client;
pub mod embed;
pub mod report;
pub mod run;
pub mod serve;
