//! spate: a Kafka-compatible message broker on thread-per-core io_uring shards.

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod data_dir;
pub mod fsutil;
pub mod group;
pub mod group_cli;
pub mod handlers;
pub mod protocol;
pub mod server;
pub mod storage;
