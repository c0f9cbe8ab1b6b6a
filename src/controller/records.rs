//! Metadata records, the entries of the controller's Raft log (KRaft's
//! record types, trimmed to what spate has), and the image they build.
//!
//! An entry of the log is one JSON array of records, made by one commit of
//! the active controller's admin queue. Every node applies them in log order
//! to its `ClusterMeta`; a snapshot is the whole image as JSON. Records are
//! derived by diffing the image before and after the queued changes, so a
//! change is described exactly once (in `broker::admin`), not twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::metadata::{BrokerRegistration, ClusterMeta, TopicMeta};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum MetadataRecord {
    /// A topic created or changed (configs, partitions, partition states): its whole new state.
    Topic(TopicMeta),
    /// A topic deleted; the id makes a late record for an older topic of the
    /// same name harmless.
    RemoveTopic {
        name: String,
        #[serde(with = "crate::broker::metadata::hex_id")]
        id: [u8; 16],
    },
    /// A broker registered, changed its endpoint, or was fenced or unfenced.
    Broker(BrokerRegistration),
    /// The first producer id not yet handed out.
    ProducerIds { next: i64 },
    /// A broker resource's dynamic configs ("" the cluster default, or a
    /// node id): its whole new set (empty: none left).
    BrokerConfigs { resource: String, configs: BTreeMap<String, String> },
}

/// The image as stored in a snapshot.
#[derive(Serialize, Deserialize, Default)]
struct ImageFile {
    topics: Vec<TopicMeta>,
    #[serde(default)]
    brokers: Vec<BrokerRegistration>,
    #[serde(default)]
    next_producer_id: i64,
    #[serde(default)]
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// The records that turn `old` into `new`, in an order that applies cleanly
/// (removals first, so a name deleted and created again is never confused).
pub fn diff(old: &ClusterMeta, new: &ClusterMeta) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (name, topic) in &old.topics {
        if new.topics.get(name).is_none_or(|t| t.id != topic.id) {
            records.push(MetadataRecord::RemoveTopic { name: name.clone(), id: topic.id });
        }
    }
    for (name, topic) in &new.topics {
        if old.topics.get(name).is_none_or(|t| !Arc::ptr_eq(t, topic) && **t != **topic) {
            records.push(MetadataRecord::Topic((**topic).clone()));
        }
    }
    for (node, broker) in &new.brokers {
        if old.brokers.get(node) != Some(broker) {
            records.push(MetadataRecord::Broker(broker.clone()));
        }
    }
    if old.next_producer_id != new.next_producer_id {
        records.push(MetadataRecord::ProducerIds { next: new.next_producer_id });
    }
    let resources: std::collections::BTreeSet<&String> =
        old.broker_configs.keys().chain(new.broker_configs.keys()).collect();
    for resource in resources {
        let configs = new.broker_configs.get(resource);
        if old.broker_configs.get(resource) != configs {
            let configs = configs.cloned().unwrap_or_default();
            records.push(MetadataRecord::BrokerConfigs { resource: resource.clone(), configs });
        }
    }
    records
}

/// Applies one record to `meta`.
pub fn apply(meta: &mut ClusterMeta, record: MetadataRecord) {
    match record {
        MetadataRecord::Topic(topic) => meta.put_topic(topic),
        MetadataRecord::RemoveTopic { name, id } => {
            if meta.topic(&name).is_some_and(|t| t.id == id) {
                meta.remove_topic(&name);
            }
        }
        MetadataRecord::Broker(broker) => {
            meta.brokers.insert(broker.node_id, broker);
        }
        MetadataRecord::ProducerIds { next } => meta.next_producer_id = meta.next_producer_id.max(next),
        MetadataRecord::BrokerConfigs { resource, configs } => {
            if configs.is_empty() {
                meta.broker_configs.remove(&resource);
            } else {
                meta.broker_configs.insert(resource, configs);
            }
        }
    }
}

pub fn encode_records(records: &[MetadataRecord]) -> Vec<u8> {
    serde_json::to_vec(records).expect("records serialise")
}

pub fn decode_records(bytes: &[u8]) -> anyhow::Result<Vec<MetadataRecord>> {
    Ok(serde_json::from_slice(bytes)?)
}

/// The image of `meta` for a snapshot.
pub fn encode_image(meta: &ClusterMeta) -> Vec<u8> {
    let file = ImageFile {
        topics: meta.topics.values().map(|t| (**t).clone()).collect(),
        brokers: meta.brokers.values().cloned().collect(),
        next_producer_id: meta.next_producer_id,
        broker_configs: meta.broker_configs.clone(),
    };
    serde_json::to_vec(&file).expect("the image serialises")
}

/// Replaces `meta`'s replicated state with a snapshot's image.
pub fn decode_image(meta: &mut ClusterMeta, bytes: &[u8]) -> anyhow::Result<()> {
    let file: ImageFile = if bytes.is_empty() { ImageFile::default() } else { serde_json::from_slice(bytes)? };
    let mut fresh = ClusterMeta::new(meta.node_id, meta.placement.shard_count(), file.topics);
    fresh.brokers = file.brokers.into_iter().map(|b| (b.node_id, b)).collect::<BTreeMap<_, _>>();
    fresh.next_producer_id = file.next_producer_id;
    fresh.broker_configs = file.broker_configs;
    fresh.controller = meta.controller;
    fresh.applied_index = meta.applied_index;
    *meta = fresh;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::metadata::random_topic_id;

    fn topic(name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            id: random_topic_id(),
            partitions,
            configs: BTreeMap::new(),
            legacy_leader_epoch: 0,
            assignment: Vec::new(),
        }
    }

    #[test]
    fn a_diff_replayed_on_the_old_image_gives_the_new_one() {
        let mut old = ClusterMeta::new(1, 2, vec![topic("a", 2), topic("b", 1)]);
        old.brokers.insert(1, BrokerRegistration { node_id: 1, host: "h".into(), port: 9092, fenced: false });
        let mut new = old.clone();
        new.remove_topic("a");
        new.put_topic(topic("a", 3)); // deleted and created again: a new id
        let mut c = topic("c", 4);
        c.configs.insert("retention.ms".into(), "5".into());
        new.put_topic(c);
        new.brokers.get_mut(&1).unwrap().fenced = true;
        new.next_producer_id = 2000;
        let retention = BTreeMap::from([("log.retention.ms".to_string(), "60000".to_string())]);
        new.broker_configs.insert(String::new(), retention.clone());
        old.broker_configs.insert("1".into(), retention);

        let records = diff(&old, &new);
        let decoded = decode_records(&encode_records(&records)).unwrap();
        assert_eq!(decoded, records);
        let mut replayed = old.clone();
        for record in decoded {
            apply(&mut replayed, record);
        }
        assert_eq!(encode_image(&replayed), encode_image(&new));
        assert_eq!(replayed.placement.len(), new.placement.len());
        assert!(diff(&new, &replayed).is_empty());
    }

    #[test]
    fn an_image_round_trips() {
        let mut meta = ClusterMeta::new(3, 2, vec![topic("x", 5)]);
        meta.next_producer_id = 7000;
        meta.broker_configs.insert("3".into(), BTreeMap::from([("min.insync.replicas".into(), "2".into())]));
        let mut back = ClusterMeta::new(3, 2, Vec::new());
        decode_image(&mut back, &encode_image(&meta)).unwrap();
        assert_eq!(encode_image(&back), encode_image(&meta));
        assert_eq!(back.placement.len(), 5);
    }
}
