//! A small blocking Kafka client for the `spate` CLI commands (topic,
//! produce, consume). It speaks the same protocol any client does, through
//! the `kafka-protocol` crate; it is not used by the broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The knobs of a Fetch request.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits { max_wait_ms: 100, min_bytes: 1, max_bytes: 16 << 20, partition_max_bytes: 1 << 20 }
    }
}

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

/// Longest response accepted. Kafka's own fetch responses stay under the
/// request's max_bytes (16 MiB here); four bytes of text ("HTTP", "SSH-")
/// read as a length are over a gigabyte.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// How long a new connection may take, and how long [`Client::connect_kafka`]
/// waits for the broker's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HINT: &str = "set the broker's address with --brokers or SPATE_BROKERS";

impl Client {
    pub fn connect(address: &str) -> Result<Client> {
        let stream = open(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, correlation_id: 0 })
    }

    /// Connects to the first of `addresses` (comma-separated, as Kafka's
    /// bootstrap servers) that answers as a Kafka broker.
    pub fn connect_kafka(addresses: &str) -> Result<Client> {
        let mut last_error = None;
        for address in addresses.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Client::connect_kafka_one(address) {
                Ok(client) => return Ok(client),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no broker address given: {HINT}")))
    }

    /// Connects and checks that the other end speaks Kafka (an ApiVersions
    /// round trip); when it does not, the error says what answered instead.
    fn connect_kafka_one(address: &str) -> Result<Client> {
        let mut client = Client::connect(address)?;
        client.stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let not_kafka = |what: String| {
            anyhow::anyhow!("{address} does not speak the Kafka protocol ({what}): is it a Kafka port? {HINT}")
        };
        let sent = client.send(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
        let mut head = [0u8; 4];
        if let Err(e) = sent.map_err(io_error).and_then(|_| client.stream.read_exact(&mut head)) {
            return Err(not_kafka(match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())
                }
                _ => "it closed the connection without answering".into(),
            }));
        }
        let len = i32::from_be_bytes(head);
        if len < 8 || len as usize > MAX_RESPONSE_BYTES {
            return Err(not_kafka(format!("it answered {:?}", client.first_line(&head))));
        }
        let mut body = vec![0u8; len as usize];
        client.stream.read_exact(&mut body).map_err(|_| not_kafka("a truncated answer".into()))?;
        let mut body = Bytes::from(body);
        let decoded = ResponseHeader::decode(&mut body, 0)
            .ok()
            .filter(|h| h.correlation_id == client.correlation_id)
            .and_then(|_| ApiVersionsResponse::decode(&mut body, 0).ok());
        if decoded.is_none() {
            return Err(not_kafka("its answer is not an ApiVersions response".into()));
        }
        client.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(client)
    }

    /// The first line of what the other end sent, starting with `head`
    /// (whatever more arrives within a moment), for an error message.
    fn first_line(&mut self, head: &[u8]) -> String {
        let mut text = head.to_vec();
        let _ = self.stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut more = [0u8; 80];
        if let Ok(n) = self.stream.read(&mut more) {
            text.extend_from_slice(&more[..n]);
        }
        let line = text.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned()
    }

    /// Sends one request at `version` and decodes its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp> {
        let correlation_id = self.send(api_key, version, request)?;
        self.receive(api_key, version, correlation_id)
    }

    /// Sends one request without waiting for its response (pipelining);
    /// returns its correlation id. Responses come back in request order.
    pub fn send<Req: Encodable>(&mut self, api_key: ApiKey, version: i16, request: &Req) -> Result<i32> {
        self.correlation_id += 1;
        let frame = request_frame(api_key, version, self.correlation_id, request)?;
        self.stream.write_all(&frame)?;
        Ok(self.correlation_id)
    }

    /// Reads and decodes the response to the request sent as `correlation_id`.
    pub fn receive<Resp: Decodable>(&mut self, api_key: ApiKey, version: i16, correlation_id: i32) -> Result<Resp> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).context("reading response (did the broker close the connection?)")?;
        let len = i32::from_be_bytes(len).max(0) as usize;
        if len > MAX_RESPONSE_BYTES {
            bail!("a response of {len} bytes: the other end does not speak the Kafka protocol");
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
        if header.correlation_id != correlation_id {
            bail!("response correlation id {} does not match request {correlation_id}", header.correlation_id);
        }
        let response = Resp::decode(&mut body, version)?;
        if body.has_remaining() {
            bail!("{} unread bytes after {api_key:?} response", body.remaining());
        }
        Ok(response)
    }
}

impl Client {
    /// Creates a topic; `partitions` -1 takes the broker default.
    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(String, String)]) -> Result<i32> {
        self.create_replicated_topic(name, partitions, -1, configs)
    }

    /// Creates a topic with `replicas` replicas per partition (-1: the broker's default).
    pub fn create_replicated_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replicas: i16,
        configs: &[(String, String)],
    ) -> Result<i32> {
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(str_bytes(name));
        topic.num_partitions = partitions;
        topic.replication_factor = replicas;
        for (k, v) in configs {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = str_bytes(k);
            c.value = Some(str_bytes(v));
            topic.configs.push(c);
        }
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![topic];
        req.timeout_ms = 30_000;
        let resp: CreateTopicsResponse = self.call(ApiKey::CreateTopics, 5, &req)?;
        let Some(t) = resp.topics.into_iter().next() else { bail!("empty CreateTopics response") };
        check(t.error_code, &format!("create {name}: {}", t.error_message.as_deref().unwrap_or("")))?;
        Ok(t.num_partitions)
    }

    /// Produces one batch of `records` (key, value); returns its base offset.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[(Option<Bytes>, Bytes)],
        acks: i16,
        compression: Compression,
    ) -> Result<i64> {
        let now = crate::storage::now_ms();
        let records: Vec<Record> =
            records.iter().enumerate().map(|(i, (k, v))| new_record(i as i64, now, k.clone(), v.clone())).collect();
        self.produce_records(topic, partition, &records, acks, compression)
    }

    /// Produces `records` (offsets 0.. in order) as one batch; returns its
    /// base offset.
    pub fn produce_records(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[Record],
        acks: i16,
        compression: Compression,
    ) -> Result<i64> {
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(&mut batch, records.iter(), &RecordEncodeOptions { version: 2, compression })?;
        self.produce_raw(topic, partition, batch.freeze(), acks)
    }

    /// Produces already-encoded batches as they are; returns the base offset.
    pub fn produce_raw(&mut self, topic: &str, partition: i32, records: Bytes, acks: i16) -> Result<i64> {
        let req = produce_request(topic, partition, records, acks);
        let resp: ProduceResponse = self.call(ApiKey::Produce, 9, &req)?;
        let part = resp.responses.into_iter().next().and_then(|t| t.partition_responses.into_iter().next());
        let Some(part) = part else { bail!("empty Produce response") };
        check(part.error_code, &format!("produce to {topic}/{partition}"))?;
        Ok(part.base_offset)
    }

    /// Deletes topics by name.
    pub fn delete_topics(&mut self, names: &[&str]) -> Result<()> {
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = names.iter().map(|n| TopicName(str_bytes(n))).collect();
        req.timeout_ms = 30_000;
        let resp: DeleteTopicsResponse = self.call(ApiKey::DeleteTopics, 4, &req)?;
        for r in resp.responses {
            check(r.error_code, &format!("delete topic {:?}", r.name))?;
        }
        Ok(())
    }

    /// DeleteRecords: moves the partition's log start to `offset` (-1: the
    /// high watermark); returns the new low watermark.
    pub fn delete_records(&mut self, topic: &str, partition: i32, offset: i64) -> Result<i64> {
        let mut p = delete_records_request::DeleteRecordsPartition::default();
        p.partition_index = partition;
        p.offset = offset;
        let mut t = delete_records_request::DeleteRecordsTopic::default();
        t.name = TopicName(str_bytes(topic));
        t.partitions = vec![p];
        let mut req = DeleteRecordsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 30_000;
        let resp: DeleteRecordsResponse = self.call(ApiKey::DeleteRecords, 2, &req)?;
        let part = resp.topics.into_iter().next().and_then(|t| t.partitions.into_iter().next());
        let Some(part) = part else { bail!("empty DeleteRecords response") };
        check(part.error_code, &format!("delete records of {topic}/{partition}"))?;
        Ok(part.low_watermark)
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, or a timestamp.
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        p.current_leader_epoch = -1;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = TopicName(str_bytes(topic));
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 7, &req)?;
        let part = resp.topics.into_iter().next().and_then(|t| t.partitions.into_iter().next());
        let Some(part) = part else { bail!("empty ListOffsets response") };
        check(part.error_code, &format!("list offsets {topic}/{partition}"))?;
        Ok(part.offset)
    }

    /// One Fetch v`version` of one partition, as the broker answered it:
    /// (error code, record bytes, high watermark).
    pub fn fetch_raw(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        limits: FetchLimits,
        version: i16,
    ) -> Result<(i16, Bytes, i64)> {
        let mut p = fetch_request::FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = limits.partition_max_bytes;
        p.current_leader_epoch = -1;
        p.log_start_offset = -1;
        let mut t = fetch_request::FetchTopic::default();
        t.topic = TopicName(str_bytes(topic));
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = limits.max_wait_ms;
        req.min_bytes = limits.min_bytes;
        req.max_bytes = limits.max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        let resp: FetchResponse = self.call(ApiKey::Fetch, version, &req)?;
        let Some(part) = resp.responses.into_iter().next().and_then(|t| t.partitions.into_iter().next()) else {
            bail!("empty Fetch response")
        };
        Ok((part.error_code, part.records.unwrap_or_default(), part.high_watermark))
    }

    /// One Fetch from `offset`: the decoded records and the high watermark.
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> Result<(Vec<Record>, i64)> {
        let limits = FetchLimits { max_wait_ms, ..FetchLimits::default() };
        let (error, mut bytes, high_watermark) = self.fetch_raw(topic, partition, offset, limits, 12)?;
        check(error, &format!("fetch {topic}/{partition}"))?;
        let mut records = Vec::new();
        while bytes.len() >= 61 {
            records.extend(RecordBatchDecoder::decode(&mut bytes)?.records);
        }
        Ok((records.into_iter().filter(|r| r.offset >= offset).collect(), high_watermark))
    }

    /// Every record from `offset` to the high watermark.
    pub fn fetch_all(&mut self, topic: &str, partition: i32, mut offset: i64) -> Result<Vec<Record>> {
        let mut all = Vec::new();
        loop {
            let (records, high_watermark) = self.fetch(topic, partition, offset, 100)?;
            if let Some(last) = records.last() {
                offset = last.offset + 1;
            }
            all.extend(records);
            if offset >= high_watermark {
                return Ok(all);
            }
        }
    }
}

/// One request as it goes on the wire: size prefix, header, body.
pub fn request_frame<Req: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Result<BytesMut> {
    let mut header = RequestHeader::default();
    header.request_api_key = api_key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("spate-cli"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, api_key.request_header_version(version))?;
    request.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// A Produce request of one partition's batches.
pub fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(str_bytes(topic));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 30_000;
    req.topic_data = vec![td];
    req
}

/// Turns a Kafka error code into an error naming `what` failed.
pub fn check(code: i16, what: &str) -> Result<()> {
    match code.err() {
        None => Ok(()),
        Some(e) => bail!("{what}: {e:?} (error code {code})"),
    }
}

pub fn new_record(offset: i64, timestamp: i64, key: Option<Bytes>, value: Bytes) -> Record {
    Record {
        transactional: false,
        control: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        // Non-idempotent batches carry baseSequence -1; the encoder keeps records
        // in one batch only while offset - sequence stays constant.
        sequence: offset as i32 - 1,
        timestamp,
        key,
        value: Some(value),
        headers: Default::default(),
        delete_horizon: false,
    }
}

/// Opens a TCP connection to `address`, within [`CONNECT_TIMEOUT`]; the
/// error says what to check.
fn open(address: &str) -> Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs = address.to_socket_addrs().map_err(|e| anyhow::anyhow!("cannot resolve {address} ({e}): {HINT}"))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    let why = match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        Some(e) if e.kind() == std::io::ErrorKind::TimedOut => "no answer".to_string(),
        Some(e) => e.to_string(),
        None => "no address".to_string(),
    };
    bail!("cannot connect to {address} ({why}): is a Kafka broker listening there? {HINT}")
}

fn io_error(e: anyhow::Error) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(e) => e,
        Err(e) => std::io::Error::other(e.to_string()),
    }
}

/// Java's `Utils.murmur2`, the hash Kafka's default partitioner applies to
/// a record's key bytes (so keys land on the same partitions as with any
/// Java, librdkafka `murmur2_random` or kafka-python producer).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in words.by_ref() {
        let mut k = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among
/// `partitions`: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

pub fn compression_by_name(name: &str) -> Result<Compression> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("unknown compression {other:?}"),
    })
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A committed offset as OffsetFetch returns it: the coordinator's own type.
pub use crate::group::FetchedOffset as CommittedOffset;

/// Group administration and committed offsets (for `spate group` and tests).
impl Client {
    /// FindCoordinator for `group`, retried while the coordinator is starting.
    pub fn find_coordinator(&mut self, group: &str) -> Result<()> {
        let mut req = FindCoordinatorRequest::default();
        req.key = str_bytes(group);
        for _ in 0..100 {
            let resp: FindCoordinatorResponse = self.call(ApiKey::FindCoordinator, 3, &req)?;
            if resp.error_code != kafka_protocol::error::ResponseError::CoordinatorNotAvailable.code() {
                return check(resp.error_code, &format!("find coordinator of {group}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no coordinator for group {group}")
    }

    /// Commits `offsets` (topic, partition, offset, metadata) outside any
    /// generation (a simple consumer or an admin); returns each error code.
    pub fn commit_offsets(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Result<Vec<i16>> {
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.generation_id_or_member_epoch = generation;
        req.member_id = str_bytes(member_id);
        for (topic, partition, offset, metadata) in offsets {
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = *partition;
            p.committed_offset = *offset;
            p.committed_leader_epoch = -1;
            p.committed_metadata = Some(str_bytes(metadata));
            match req.topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
                Some(t) => t.partitions.push(p),
                None => {
                    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
                    t.name = TopicName(str_bytes(topic));
                    t.partitions.push(p);
                    req.topics.push(t);
                }
            }
        }
        let resp: OffsetCommitResponse = self.call(ApiKey::OffsetCommit, 8, &req)?;
        Ok(resp.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)).collect())
    }

    /// The committed offsets of `group` (all of them if `topics` is None).
    pub fn fetch_offsets(&mut self, group: &str, topics: Option<&[(&str, Vec<i32>)]>) -> Result<Vec<CommittedOffset>> {
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.topics = topics.map(|topics| {
            topics
                .iter()
                .map(|(name, partitions)| {
                    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
                    t.name = TopicName(str_bytes(name));
                    t.partition_indexes = partitions.clone();
                    t
                })
                .collect()
        });
        let resp: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, 7, &req)?;
        check(resp.error_code, &format!("fetch offsets of {group}"))?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                out.push(CommittedOffset {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.metadata.as_deref().unwrap_or("").to_string(),
                    error_code: p.error_code,
                });
            }
        }
        Ok(out)
    }

    /// Every group: (id, protocol type, state).
    pub fn list_groups(&mut self) -> Result<Vec<(String, String, String)>> {
        let resp: ListGroupsResponse = self.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
        check(resp.error_code, "list groups")?;
        Ok(resp
            .groups
            .into_iter()
            .map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string(), g.group_state.to_string()))
            .collect())
    }

    pub fn describe_group(&mut self, group: &str) -> Result<describe_groups_response::DescribedGroup> {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(str_bytes(group))];
        let resp: DescribeGroupsResponse = self.call(ApiKey::DescribeGroups, 5, &req)?;
        let Some(g) = resp.groups.into_iter().next() else { bail!("empty DescribeGroups response") };
        check(g.error_code, &format!("describe group {group}"))?;
        Ok(g)
    }

    pub fn delete_group(&mut self, group: &str) -> Result<()> {
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = vec![GroupId(str_bytes(group))];
        let resp: DeleteGroupsResponse = self.call(ApiKey::DeleteGroups, 2, &req)?;
        let Some(r) = resp.results.into_iter().next() else { bail!("empty DeleteGroups response") };
        check(r.error_code, &format!("delete group {group}"))
    }

    /// Deletes `group`'s committed offsets of `topic`'s `partitions`.
    pub fn delete_offsets(&mut self, group: &str, topic: &str, partitions: &[i32]) -> Result<()> {
        let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
        t.name = TopicName(str_bytes(topic));
        t.partitions = partitions
            .iter()
            .map(|p| {
                let mut out = offset_delete_request::OffsetDeleteRequestPartition::default();
                out.partition_index = *p;
                out
            })
            .collect();
        let mut req = OffsetDeleteRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.topics = vec![t];
        let resp: OffsetDeleteResponse = self.call(ApiKey::OffsetDelete, 0, &req)?;
        check(resp.error_code, &format!("delete offsets of {group}"))?;
        for t in resp.topics {
            for p in t.partitions {
                check(p.error_code, &format!("delete offset of {group} {topic}/{}", p.partition_index))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_java() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_positive_hash_modulo_count() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 8 = 4.
        assert_eq!(partition_for_key(b"21", 8), 4);
        assert_eq!(partition_for_key(b"foobar", 7), 0);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }
}
