//! The placement table: which node and which shard own a key (for the broker,
//! a topic partition), and under which leader epoch.
//!
//! Every node holding a replica of a key keeps it on the same shard number,
//! chosen by a stable spread of the key.

use std::collections::HashMap;
use std::hash::Hash;

/// A broker node in the cluster.
pub type NodeId = i32;
/// An executor (core) within one node.
pub type ShardId = usize;

/// Where one key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The node that leads the key.
    pub leader: NodeId,
    /// Bumped on every change of leader; fences stale leaders and readers.
    pub leader_epoch: i32,
    /// Every node holding a replica, the leader first.
    pub replicas: Vec<NodeId>,
    /// The shard that owns the key's state on any node holding a replica.
    pub shard: ShardId,
}

/// Key -> placement, with a deterministic spread of new keys over shards.
#[derive(Clone, Debug)]
pub struct PlacementTable<K: Eq + Hash> {
    shard_count: usize,
    entries: HashMap<K, Placement>,
}

impl<K: Eq + Hash + Clone> PlacementTable<K> {
    pub fn new(shard_count: usize) -> Self {
        assert!(shard_count > 0, "a node has at least one shard");
        PlacementTable { shard_count, entries: HashMap::new() }
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Places `key` on `node`, on the shard chosen by `spread` (for example a
    /// topic's hash plus the partition number), so that consecutive partitions
    /// of one topic land on different shards.
    pub fn place(&mut self, key: K, node: NodeId, leader_epoch: i32, spread: u64) -> &Placement {
        let shard = (spread % self.shard_count as u64) as ShardId;
        let placement = Placement { leader: node, leader_epoch, replicas: vec![node], shard };
        self.entries.insert(key.clone(), placement);
        &self.entries[&key]
    }

    /// Places `key` led by `leader` (or no node: -1) with `replicas`; the
    /// shard is chosen by `spread` as in [`PlacementTable::place`].
    pub fn place_replicas(&mut self, key: K, leader: NodeId, leader_epoch: i32, replicas: &[NodeId], spread: u64) {
        let shard = (spread % self.shard_count as u64) as ShardId;
        let placement = Placement { leader, leader_epoch, replicas: replicas.to_vec(), shard };
        self.entries.insert(key, placement);
    }

    pub fn get(&self, key: &K) -> Option<&Placement> {
        self.entries.get(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<Placement> {
        self.entries.remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Placement)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_consecutive_keys_over_shards() {
        let mut table = PlacementTable::new(4);
        let shards: Vec<ShardId> = (0..8u64).map(|p| table.place(p, 0, 0, 10 + p).shard).collect();
        assert_eq!(shards, vec![2, 3, 0, 1, 2, 3, 0, 1]);
        assert_eq!(table.len(), 8);
        assert_eq!(table.get(&3).unwrap().replicas, vec![0]);
        assert!(table.remove(&3).is_some());
        assert!(table.get(&3).is_none());
    }
}
