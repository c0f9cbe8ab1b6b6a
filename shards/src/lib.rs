//! The thread-per-core runtime: one pinned glommio executor per core ("shard"),
//! typed actor messages between shards, and the table saying which shard owns
//! which piece of state.
//!
//! It knows nothing of Kafka. The broker decides what a message is and what a
//! shard owns; this crate only starts the shards, connects every pair of them
//! with a bounded mailbox, and delivers messages with replies, in the manner of
//! Seastar's `submit_to`.

pub mod mailbox;
pub mod placement;
pub mod runtime;

pub use mailbox::{Mailbox, Reply, SendError};
pub use placement::{NodeId, Placement, PlacementTable, ShardId};
pub use runtime::{periodic, probe_io_uring, RuntimeConfig, Shard, ShardRuntime};
