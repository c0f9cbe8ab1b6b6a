//! Storage: partition logs made of segment files, written with O_DIRECT through
//! io_uring and indexed sparsely. It knows record batches only as framed,
//! checksummed bytes and nothing of the Kafka wire protocol.

pub mod batch;
pub mod cleaner;
pub mod epochs;
pub mod faults;
pub mod index;
pub mod log;
#[cfg(test)]
mod model_test;
pub mod open_files;
pub mod partition;
pub mod producers;
pub mod records;
pub mod recovery;
pub mod replica_set;
pub mod segment;
pub mod truncate;
pub mod write_budget;

pub use log::{LogConfig, PartitionLog};
pub use partition::{now_ms, Durability, Leadership, Partition, StorageError};
pub use recovery::open_log;
