//! spate: a Kafka-compatible message broker on thread-per-core io_uring shards.

pub mod admin_http;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod data_dir;
pub mod fsutil;
pub mod group;
pub mod group_cli;
pub mod handlers;
pub mod logging;
pub mod metrics;
pub mod partition_cli;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod storage;

/// The git commit this binary was built from ("unknown" outside a checkout).
pub fn git_commit() -> &'static str {
    option_env!("SPATE_GIT_COMMIT").unwrap_or("unknown")
}
