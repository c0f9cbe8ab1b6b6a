//! The request router: one handler file per Kafka API, and the table of API
//! versions spate advertises. Only what is implemented is advertised.

mod acls;
mod alter_configs;
mod alter_partition_reassignments;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod describe_producers;
mod describe_topic_partitions;
mod elect_leaders;
pub mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_partition_reassignments;
pub mod metadata;
mod offset_commit;
pub use offset_commit::handle as handle_offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Buf, Bytes};
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use shards::ShardId;

use crate::broker::{Broker, PartitionError};
use crate::protocol::{Reply, Request};

/// (API, lowest version, highest version) served.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

pub fn supported_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == api_key).map(|&(_, min, max)| (min, max))
}

/// Why a frame could not be served; the connection is closed.
#[derive(Debug)]
pub struct FrameError(pub String);

/// Parses a frame's header. ApiVersions at any version gets through (it must
/// be answered even when unsupported); other unsupported versions do not.
pub fn parse_request(mut frame: Bytes) -> Result<Request, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError(format!("frame of {} bytes is too short for a request header", frame.len())));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(key).map_err(|_| FrameError(format!("unknown API key {key}")))?;
    let supported = supported_range(api_key).ok_or_else(|| FrameError(format!("API {api_key:?} is not supported")))?;
    if api_key == ApiKey::ApiVersions && !(supported.0..=supported.1).contains(&version) {
        // Answered in the v0 format whatever its header looks like: only the
        // correlation id (always at bytes 4..8) is needed.
        let mut header = RequestHeader::default();
        header.request_api_key = key;
        header.request_api_version = version;
        header.correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        return Ok(Request { api_key, header, body: Bytes::new(), peer: None });
    }
    if !(supported.0..=supported.1).contains(&version) {
        return Err(FrameError(format!(
            "{api_key:?} v{version} is not supported (v{}..v{})",
            supported.0, supported.1
        )));
    }
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| FrameError(format!("bad {api_key:?} header: {e}")))?;
    Ok(Request { api_key, header, body: frame, peer: None })
}

/// Decodes the body of `request` as `T`.
pub fn decode_body<T: Decodable>(request: &Request) -> Result<T, FrameError> {
    let mut body = request.body.clone();
    let decoded = T::decode(&mut body, request.version())
        .map_err(|e| FrameError(format!("bad {:?} v{} body: {e}", request.api_key, request.version())))?;
    if body.has_remaining() {
        tracing::debug!(api = ?request.api_key, extra = body.remaining(), "request body has trailing bytes");
    }
    Ok(decoded)
}

/// Fires once a request has taken effect; the connection dispatches its next
/// request only then, so a connection's requests take effect in the order
/// they arrived (as Kafka's one-request-at-a-time connections), while their
/// waits for durability still overlap. Dropping it fires it.
///
/// An OffsetCommit sent to another shard may say earlier that it is
/// *sequenced* on the link to that shard: the link is FIFO and the shard
/// queues commits in arrival order, synchronously, so a commit sent after it
/// on the same link takes effect after it. A commit pipelined behind another
/// then need not wait for the cross-shard wake-up of its `Applied`.
pub struct Applied {
    applied: oneshot::Sender<()>,
    sequenced: oneshot::Sender<ShardId>,
}

/// What the request after this one waits on.
pub struct AppliedWait {
    applied: oneshot::Receiver<()>,
    sequenced: oneshot::Receiver<ShardId>,
}

impl Applied {
    /// The signal, and what the connection waits on.
    pub fn new() -> (Applied, AppliedWait) {
        let (applied, applied_rx) = oneshot::channel();
        let (sequenced, sequenced_rx) = oneshot::channel();
        (Applied { applied, sequenced }, AppliedWait { applied: applied_rx, sequenced: sequenced_rx })
    }

    /// The signal as a plain sender, to hand to another shard (dropping it fires).
    pub fn into_sender(self) -> oneshot::Sender<()> {
        self.applied
    }

    /// The plain sender, and the signal that the request is sequenced on a
    /// link: call it with the shard once its message is on that link.
    pub fn into_parts(self) -> (oneshot::Sender<()>, impl FnOnce(ShardId)) {
        let sequenced = self.sequenced;
        (self.applied, move |shard| {
            let _ = sequenced.send(shard);
        })
    }
}

impl AppliedWait {
    /// Resolves (Ok or Canceled) once the request has taken effect.
    pub async fn applied(self) {
        let _ = self.applied.await;
    }

    /// Resolves once the request is ordered before whatever is sent from now
    /// on over the link to shard `link` (None: no link, this shard): it took
    /// effect, or it is sequenced on that very link.
    pub async fn ordered_before(self, link: Option<ShardId>) {
        let AppliedWait { mut applied, sequenced } = self;
        let mut sequenced = Some(sequenced).filter(|_| link.is_some());
        std::future::poll_fn(|cx| {
            if Pin::new(&mut applied).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(rx) = sequenced.as_mut() {
                if let Poll::Ready(on) = Pin::new(rx).poll(cx) {
                    if on.ok() == link {
                        return Poll::Ready(());
                    }
                    sequenced = None; // on another link, or never: only `applied` will do
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Requests that change nothing: the next request need not wait for them
/// (a long-polling Fetch must not hold up a Produce behind it).
fn changes_nothing(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::ApiVersions
            | ApiKey::Fetch
            | ApiKey::ListOffsets
            | ApiKey::DescribeConfigs
            | ApiKey::OffsetForLeaderEpoch
            | ApiKey::OffsetFetch
            | ApiKey::ListGroups
            | ApiKey::DescribeGroups
            | ApiKey::DescribeCluster
            | ApiKey::ListPartitionReassignments
            | ApiKey::DescribeLogDirs
            | ApiKey::DescribeProducers
            | ApiKey::DescribeTopicPartitions
            | ApiKey::DescribeAcls
    )
}

/// Serves one request. `applied` fires when it has taken effect: a Produce
/// once its batches have offsets, an OffsetCommit once queued on its
/// coordinator, a request that changes nothing at once, any other when it is
/// done. `previous`: the previous request's signal when the connection did
/// not wait for it (an OffsetCommit behind an OffsetCommit): the request waits
/// for it before taking effect.
pub async fn handle(
    broker: &Rc<Broker>,
    request: Request,
    applied: Applied,
    previous: Option<AppliedWait>,
) -> Result<Reply, FrameError> {
    if request.api_key == ApiKey::OffsetCommit {
        return offset_commit::handle(broker.clone(), request, applied, previous).await;
    }
    if let Some(previous) = previous {
        previous.applied().await;
    }
    let _applied_on_return = match request.api_key {
        ApiKey::Produce => return produce::handle(broker, &request, applied).await,
        api if changes_nothing(api) => None, // dropped: fired now
        _ => Some(applied),
    };
    match request.api_key {
        ApiKey::ApiVersions => Ok(api_versions::handle(&request)),
        ApiKey::Metadata => metadata::handle(broker, &request).await,
        ApiKey::Fetch => fetch::handle(broker, &request).await,
        ApiKey::ListOffsets => list_offsets::handle(broker, &request).await,
        ApiKey::CreateTopics => create_topics::handle(broker, &request).await,
        ApiKey::DeleteTopics => delete_topics::handle(broker, &request).await,
        ApiKey::CreatePartitions => create_partitions::handle(broker, &request).await,
        ApiKey::DescribeConfigs => describe_configs::handle(broker, &request),
        ApiKey::AlterConfigs => alter_configs::handle_alter(broker, &request).await,
        ApiKey::IncrementalAlterConfigs => alter_configs::handle_incremental(broker, &request).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(broker, &request).await,
        ApiKey::DeleteRecords => delete_records::handle(broker, &request).await,
        ApiKey::InitProducerId => init_producer_id::handle(broker, &request).await,
        ApiKey::FindCoordinator => find_coordinator::handle(broker, &request).await,
        ApiKey::JoinGroup => join_group::handle(broker, &request).await,
        ApiKey::SyncGroup => sync_group::handle(broker, &request).await,
        ApiKey::Heartbeat => heartbeat::handle(broker, &request).await,
        ApiKey::LeaveGroup => leave_group::handle(broker, &request).await,
        ApiKey::OffsetFetch => offset_fetch::handle(broker, &request).await,
        ApiKey::ListGroups => list_groups::handle(broker, &request).await,
        ApiKey::DescribeGroups => describe_groups::handle(broker, &request).await,
        ApiKey::DeleteGroups => delete_groups::handle(broker, &request).await,
        ApiKey::OffsetDelete => offset_delete::handle(broker, &request).await,
        ApiKey::DescribeCluster => describe_cluster::handle(broker, &request),
        ApiKey::ElectLeaders => elect_leaders::handle(broker, &request).await,
        ApiKey::AlterPartitionReassignments => alter_partition_reassignments::handle(broker, &request).await,
        ApiKey::ListPartitionReassignments => list_partition_reassignments::handle(broker, &request),
        ApiKey::DescribeLogDirs => describe_log_dirs::handle(broker, &request).await,
        ApiKey::DescribeProducers => describe_producers::handle(broker, &request).await,
        ApiKey::DescribeTopicPartitions => describe_topic_partitions::handle(broker, &request),
        ApiKey::DescribeAcls => acls::handle_describe(&request),
        ApiKey::CreateAcls => acls::handle_create(&request),
        ApiKey::DeleteAcls => acls::handle_delete(&request),
        other => Err(FrameError(format!("API {other:?} is not supported"))),
    }
}

/// The Kafka error code for a partition-level failure.
pub fn error_code(error: PartitionError) -> i16 {
    let e = match error {
        PartitionError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        PartitionError::CorruptMessage => ResponseError::CorruptMessage,
        PartitionError::InvalidRecord => ResponseError::InvalidRecord,
        PartitionError::MessageTooLarge => ResponseError::MessageTooLarge,
        PartitionError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        PartitionError::StorageError => ResponseError::KafkaStorageError,
        PartitionError::NotAvailable => ResponseError::NotLeaderOrFollower,
        PartitionError::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber,
        PartitionError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
        PartitionError::InternalTopic => ResponseError::InvalidTopicException,
        PartitionError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
        PartitionError::RequestTimedOut => ResponseError::RequestTimedOut,
        PartitionError::NotFollower => ResponseError::NotLeaderOrFollower,
        PartitionError::InvalidTimestamp => ResponseError::InvalidTimestamp,
    };
    e.code()
}

/// Checks a client's idea of the leader epoch against ours (-1: no check).
pub fn check_leader_epoch(client_epoch: i32, leader_epoch: i32) -> Result<(), i16> {
    if client_epoch < 0 || client_epoch == leader_epoch {
        Ok(())
    } else if client_epoch < leader_epoch {
        Err(ResponseError::FencedLeaderEpoch.code())
    } else {
        Err(ResponseError::UnknownLeaderEpoch.code())
    }
}
