//! The `vigil` command-line client: controller queries, `demo` and `bench`.

pub mod bench;
pub mod client;
pub mod demo;
pub mod table;
pub mod view;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}
