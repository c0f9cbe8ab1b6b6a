//! The actor messages shards exchange, and the results they carry back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shards::Reply;

use super::admin::{AdminOp, AdminResult};
use super::metadata::{ClusterMeta, TopicPartition};
use crate::group::{GroupOp, GroupResult};
use crate::storage::Durability;
use kafka_protocol::messages::list_groups_response::ListedGroup;

/// Work on one partition, run by its owning shard.
#[derive(Debug)]
pub enum PartitionOp {
    /// `appended` is dropped once the batch has its offsets (or failed),
    /// before the wait for `durability`: the connection may then go on.
    Produce {
        records: Bytes,
        durability: Durability,
        appended: futures::channel::oneshot::Sender<()>,
        /// acks=all: how long to wait for the in-sync replicas (the request's timeout).
        timeout_ms: u64,
    },
    /// `follower`: a follower replica's fetch (its node id): it reads
    /// everything written, and its fetch offset is its log end.
    Read {
        offset: i64,
        max_bytes: usize,
        follower: Option<i32>,
    },
    Offsets,
    OffsetForTime {
        timestamp: i64,
    },
    MaxTimestamp,
    DeleteRecords {
        offset: i64,
    },
    EndOffsetForEpoch {
        epoch: i32,
    },
    /// DescribeProducers: the partition's idempotent producers.
    Producers,
}

#[derive(Debug)]
pub enum PartitionOk {
    Produced {
        base_offset: i64,
        log_append_time_ms: i64,
        log_start_offset: i64,
    },
    Read {
        parts: Vec<Bytes>,
        high_watermark: i64,
        log_start_offset: i64,
    },
    Offsets {
        log_start_offset: i64,
        high_watermark: i64,
    },
    /// (timestamp, offset) of the batch found, if any.
    Timestamped {
        found: Option<(i64, i64)>,
    },
    Deleted {
        low_watermark: i64,
    },
    /// (leader epoch, end offset) for the requested epoch, if known.
    EpochEnd {
        found: Option<(i32, i64)>,
    },
    Producers {
        producers: Vec<crate::storage::producers::ActiveProducer>,
    },
}

/// Partition-level failures; the handlers map each to a Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionError {
    UnknownTopicOrPartition,
    CorruptMessage,
    InvalidRecord,
    MessageTooLarge,
    OffsetOutOfRange,
    StorageError,
    NotAvailable,
    OutOfOrderSequence,
    InvalidProducerEpoch,
    /// Clients may not write to or delete from an internal topic.
    InternalTopic,
    /// acks=all with fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas,
    /// acks=all: the in-sync replicas did not all have the batch in time.
    RequestTimedOut,
    /// A fetch from a node that is not one of the partition's replicas.
    NotFollower,
    /// A timestamp outside the topic's message.timestamp.*.max.ms.
    InvalidTimestamp,
}

pub type PartitionResult = Result<PartitionOk, PartitionError>;

pub enum ShardMsg {
    Partition {
        tp: TopicPartition,
        op: PartitionOp,
        reply: Reply<PartitionResult>,
    },
    WaitForData {
        waits: Vec<(TopicPartition, i64)>,
        timeout: Duration,
        /// A follower's fetch: waits for written data, not the high watermark.
        replica: bool,
        reply: Reply<()>,
    },
    /// To shard 0, which runs it on (or forwards it to) the active controller.
    Admin {
        op: AdminOp,
        reply: Reply<AdminResult>,
    },
    /// From the controller: install this snapshot.
    Install {
        meta: Arc<ClusterMeta>,
        reply: Reply<()>,
    },
    /// From the controller at start: every shard has its partitions open.
    Start,
    /// A client connection another shard accepted, for this one to serve
    /// (it serves fewer).
    Connection {
        socket: std::os::fd::OwnedFd,
    },
    /// To the coordinator of a group: the shard owning its offsets partition.
    Group {
        partition: i32,
        op: GroupOp,
        reply: Reply<GroupResult>,
    },
    /// To every shard: the groups it coordinates (state filter, any case).
    ListGroups {
        states: Vec<String>,
        reply: Reply<Result<Vec<ListedGroup>, i16>>,
    },
    /// To every shard, for a metrics scrape: its figures.
    Metrics {
        reply: Reply<crate::metrics::ShardSnapshot>,
    },
    /// To every shard, for DescribeLogDirs: the replicas it holds.
    LocalReplicas {
        reply: Reply<Vec<LocalReplica>>,
    },
}

/// A replica held on this node, as DescribeLogDirs shows it.
#[derive(Debug, Clone, Copy)]
pub struct LocalReplica {
    pub tp: TopicPartition,
    pub size_bytes: u64,
    /// How far the log end trails the high watermark (0 on a leader).
    pub offset_lag: i64,
}
