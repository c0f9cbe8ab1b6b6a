//! Idempotent producers: InitProducerId hands out ids that stay unique across
//! restarts; a retried batch is stored once; a sequence gap or a stale epoch
//! is refused with Kafka's error codes.

mod common;

use bytes::{Bytes, BytesMut};
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use spate::client::{new_record, Client};

fn init_producer_id(client: &mut Client) -> (i64, i16) {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = None;
    req.transaction_timeout_ms = 60_000;
    req.producer_id = ProducerId(-1);
    req.producer_epoch = -1;
    let resp: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 4, &req).unwrap();
    assert_eq!(resp.error_code, 0);
    (resp.producer_id.0, resp.producer_epoch)
}

fn idempotent_batch(pid: i64, epoch: i16, first_sequence: i32, n: usize) -> Bytes {
    let records: Vec<_> = (0..n)
        .map(|i| {
            let mut r = new_record(i as i64, 1, None, Bytes::from(format!("s{}", first_sequence + i as i32)));
            r.producer_id = pid;
            r.producer_epoch = epoch;
            r.sequence = first_sequence + i as i32;
            r
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::Zstd };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
    buf.freeze()
}

#[test]
fn retried_batches_are_stored_once() {
    let dir = temp_dir("idempotence");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("idem", 1, &[]).unwrap();
    let (pid, epoch) = init_producer_id(&mut client);
    let (other, _) = init_producer_id(&mut client);
    assert_ne!(pid, other, "every producer gets its own id");

    assert_eq!(client.produce_raw("idem", 0, idempotent_batch(pid, epoch, 0, 5), -1).unwrap(), 0);
    assert_eq!(client.produce_raw("idem", 0, idempotent_batch(pid, epoch, 5, 5), -1).unwrap(), 5);
    assert_eq!(
        client.produce_raw("idem", 0, idempotent_batch(pid, epoch, 0, 5), -1).unwrap(),
        0,
        "a retry gets the original offset"
    );
    let err = client.produce_raw("idem", 0, idempotent_batch(pid, epoch, 20, 5), -1).unwrap_err().to_string();
    assert!(err.contains("OutOfOrderSequenceNumber"), "{err}");
    assert_eq!(
        client.produce_raw("idem", 0, idempotent_batch(pid, epoch + 1, 0, 2), -1).unwrap(),
        10,
        "a new epoch restarts sequences"
    );
    let err = client.produce_raw("idem", 0, idempotent_batch(pid, epoch, 10, 1), -1).unwrap_err().to_string();
    assert!(err.contains("InvalidProducerEpoch"), "{err}");
    assert_eq!(client.fetch_all("idem", 0, 0).unwrap().len(), 12, "duplicates and refused batches stored nothing");
    broker.stop();

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    assert_eq!(
        client.produce_raw("idem", 0, idempotent_batch(pid, epoch + 1, 0, 2), -1).unwrap(),
        10,
        "producer state is rebuilt from the log at start"
    );
    let (after_restart, _) = init_producer_id(&mut client);
    assert!(after_restart != pid && after_restart != other, "ids are not reused after a restart");
    broker.stop();
}
