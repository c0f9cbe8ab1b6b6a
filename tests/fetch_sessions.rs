//! Incremental fetch sessions (KIP-227) as a session-using client sees them:
//! a full fetch creates a session, later epochs name only what changed and
//! are answered only with news, and wrong ids or epochs get Kafka's errors.
//! Requests and responses are encoded by the `kafka-protocol` crate.

mod common;

use common::{temp_dir, TestBroker};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::records::Compression;
use spate::client::{str_bytes, Client};

const VERSION: i16 = 12;

fn partition(p: i32, fetch_offset: i64) -> FetchPartition {
    let mut fp = FetchPartition::default();
    fp.partition = p;
    fp.fetch_offset = fetch_offset;
    fp.partition_max_bytes = 1 << 20;
    fp.current_leader_epoch = -1;
    fp.log_start_offset = -1;
    fp
}

fn request(session_id: i32, session_epoch: i32, named: &[(i32, i64)], forgotten: &[i32]) -> FetchRequest {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 200;
    req.min_bytes = 1;
    req.max_bytes = 50 << 20;
    req.session_id = session_id;
    req.session_epoch = session_epoch;
    if !named.is_empty() {
        let mut t = FetchTopic::default();
        t.topic = TopicName(str_bytes("s"));
        t.partitions = named.iter().map(|&(p, offset)| partition(p, offset)).collect();
        req.topics = vec![t];
    }
    if !forgotten.is_empty() {
        let mut t = ForgottenTopic::default();
        t.topic = TopicName(str_bytes("s"));
        t.partitions = forgotten.to_vec();
        req.forgotten_topics_data = vec![t];
    }
    req
}

/// (top-level error, session id, [(partition, high watermark, record bytes)]).
fn fetch(client: &mut Client, req: &FetchRequest) -> (i16, i32, Vec<(i32, i64, usize)>) {
    let resp: FetchResponse = client.call(ApiKey::Fetch, VERSION, req).unwrap();
    let parts = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, p.high_watermark, p.records.as_ref().map_or(0, |r| r.len())))
        .collect();
    (resp.error_code, resp.session_id, parts)
}

fn produce(client: &mut Client, p: i32, n: usize) {
    let records: Vec<_> = (0..n).map(|i| (None, bytes::Bytes::from(format!("v{i}")))).collect();
    client.produce("s", p, &records, 1, Compression::None).unwrap();
}

#[test]
fn sessions_answer_only_partitions_with_news() {
    let broker = TestBroker::start(&temp_dir("sessions"), &[]);
    let mut client = broker.client();
    client.create_topic("s", 3, &[]).unwrap();
    for p in 0..3 {
        produce(&mut client, p, 2);
    }

    // Epoch 0: a full fetch, answered with every partition, creates a session.
    let (error, id, parts) = fetch(&mut client, &request(0, 0, &[(0, 0), (1, 0), (2, 0)], &[]));
    assert_eq!(error, 0);
    assert_ne!(id, 0, "a full fetch at epoch 0 gets a session");
    assert_eq!(parts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), [(0, 2), (1, 2), (2, 2)]);
    assert!(parts.iter().all(|p| p.2 > 0));

    // Epoch 1 moves every fetch offset past the records: nothing new to tell.
    let (error, same, parts) = fetch(&mut client, &request(id, 1, &[(0, 2), (1, 2), (2, 2)], &[]));
    assert_eq!((error, same), (0, id));
    assert!(parts.is_empty(), "no records and no moved offsets: an empty answer, got {parts:?}");

    // New records on partition 1 only: the request names nothing, the answer carries 1.
    produce(&mut client, 1, 3);
    let (error, _, parts) = fetch(&mut client, &request(id, 2, &[], &[]));
    assert_eq!(error, 0);
    assert_eq!(parts.len(), 1, "only partition 1 has news: {parts:?}");
    assert_eq!((parts[0].0, parts[0].1), (1, 5));
    assert!(parts[0].2 > 0);

    // A repeated epoch or an unknown session: Kafka's errors, and no partitions.
    let (error, session, parts) = fetch(&mut client, &request(id, 2, &[], &[]));
    assert_eq!((error, session, parts.len()), (ResponseError::InvalidFetchSessionEpoch.code(), 0, 0));
    let (error, _, _) = fetch(&mut client, &request(id.wrapping_add(1).max(1), 1, &[], &[]));
    assert_eq!(error, ResponseError::FetchSessionIdNotFound.code());

    // The wrong epoch did not end the session: epoch 3 goes on. Partition 1
    // is forgotten, so its new records are not fetched; partition 2's are.
    produce(&mut client, 1, 1);
    produce(&mut client, 2, 1);
    let (error, _, parts) = fetch(&mut client, &request(id, 3, &[(1, 5)], &[1]));
    assert_eq!(error, 0);
    assert_eq!(parts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), [(2, 3)], "forgotten partition 1 is not fetched");

    // Epoch -1 naming the session closes it.
    let (error, session, parts) = fetch(&mut client, &request(id, -1, &[(0, 2)], &[]));
    assert_eq!((error, session, parts.len()), (0, 0, 1), "a sessionless fetch is answered in full, without a session");
    let (error, _, _) = fetch(&mut client, &request(id, 4, &[], &[]));
    assert_eq!(error, ResponseError::FetchSessionIdNotFound.code(), "the closed session is gone");
    broker.stop();
}

#[test]
fn a_full_cache_leaves_fetches_sessionless_and_whole() {
    let broker = TestBroker::start(&temp_dir("sessions-full"), &["max_incremental_fetch_session_cache_slots=1"]);
    let mut client = broker.client();
    client.create_topic("s", 2, &[]).unwrap();
    produce(&mut client, 0, 2);
    produce(&mut client, 1, 2);
    let (_, first, _) = fetch(&mut client, &request(0, 0, &[(0, 0), (1, 0)], &[]));
    assert_ne!(first, 0);
    // A smaller consumer session finds no room: answered in full, without a session.
    let (error, second, parts) = fetch(&mut client, &request(0, 0, &[(0, 0)], &[]));
    assert_eq!((error, second), (0, 0));
    assert_eq!(parts.len(), 1);
    assert!(parts[0].2 > 0);
    // The first session is intact.
    let (error, id, _) = fetch(&mut client, &request(first, 1, &[], &[]));
    assert_eq!((error, id), (0, first));
    broker.stop();
}
