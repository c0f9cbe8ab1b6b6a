//! What a partition's leader knows of its followers (Kafka's replica
//! manager state, one partition): each follower's log end as its fetches
//! report it, when it last caught up, and the in-sync set the controller
//! committed. From these come the high watermark (the lowest log end in the
//! ISR) and the ISR changes the leader asks the controller for. Plain data,
//! no I/O: the partition updates it on fetches and writes.

use std::collections::HashMap;

use shards::NodeId;

#[derive(Debug, Clone, Copy)]
pub struct FollowerState {
    /// One past the follower's last written offset, as its last fetch said;
    /// -1 until it has fetched in this leader epoch.
    pub log_end: i64,
    /// The last time its fetch reached the leader's log end (Kafka's
    /// lastCaughtUpTimeMs): more than `replica.lag.time.max.ms` ago, it is
    /// out of sync.
    pub last_caught_up_ms: i64,
    /// The leader's log end and the time at its previous fetch.
    leader_end_at_last_fetch: i64,
    last_fetch_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ReplicaSet {
    /// This node: the leader.
    pub leader: NodeId,
    pub leader_epoch: i32,
    /// The in-sync replicas as committed by the controller (the leader included).
    pub isr: Vec<NodeId>,
    /// An ISR change sent to the controller and not yet seen committed.
    pub pending_isr: Option<Vec<NodeId>>,
    /// Every other replica.
    pub followers: HashMap<NodeId, FollowerState>,
    /// The log end when this leader epoch began: a follower is in sync only
    /// once it has everything written before (KIP-207's rule in Kafka).
    pub epoch_start_offset: i64,
}

impl ReplicaSet {
    /// A leader starting epoch `leader_epoch` at log end `log_end`; every
    /// follower starts unknown and, if in the ISR, caught up now (so it has
    /// `replica.lag.time.max.ms` to fetch before it is dropped).
    pub fn new(
        leader: NodeId,
        leader_epoch: i32,
        replicas: &[NodeId],
        isr: &[NodeId],
        log_end: i64,
        now_ms: i64,
    ) -> ReplicaSet {
        let followers = replicas
            .iter()
            .filter(|r| **r != leader)
            .map(|r| {
                let state = FollowerState {
                    log_end: -1,
                    last_caught_up_ms: now_ms,
                    leader_end_at_last_fetch: -1,
                    last_fetch_ms: 0,
                };
                (*r, state)
            })
            .collect();
        ReplicaSet {
            leader,
            leader_epoch,
            isr: isr.to_vec(),
            pending_isr: None,
            followers,
            epoch_start_offset: log_end,
        }
    }

    /// The partition's replicas changed (a reassignment): new followers
    /// start unknown, removed ones are forgotten.
    pub fn set_replicas(&mut self, replicas: &[NodeId], now_ms: i64) {
        self.followers.retain(|n, _| replicas.contains(n));
        for r in replicas.iter().filter(|r| **r != self.leader) {
            self.followers.entry(*r).or_insert(FollowerState {
                log_end: -1,
                last_caught_up_ms: now_ms,
                leader_end_at_last_fetch: -1,
                last_fetch_ms: 0,
            });
        }
    }

    /// A follower fetched from `fetch_offset`: its log end. `leader_end` is
    /// the leader's written end now.
    pub fn on_fetch(&mut self, node: NodeId, fetch_offset: i64, leader_end: i64, now_ms: i64) -> bool {
        let Some(follower) = self.followers.get_mut(&node) else { return false };
        follower.log_end = fetch_offset;
        if fetch_offset >= leader_end {
            follower.last_caught_up_ms = now_ms;
        } else if fetch_offset >= follower.leader_end_at_last_fetch && follower.leader_end_at_last_fetch >= 0 {
            follower.last_caught_up_ms = follower.last_caught_up_ms.max(follower.last_fetch_ms);
        }
        follower.leader_end_at_last_fetch = leader_end;
        follower.last_fetch_ms = now_ms;
        true
    }

    /// The members whose log ends bound the high watermark: the committed
    /// ISR and any member a pending change adds (Kafka's "maximal ISR", so
    /// the high watermark never passes a replica about to be in sync).
    fn maximal_isr(&self) -> impl Iterator<Item = NodeId> + '_ {
        let pending = self.pending_isr.iter().flatten().filter(|n| !self.isr.contains(n));
        self.isr.iter().chain(pending).copied()
    }

    /// The lowest log end among the in-sync replicas, the leader's being
    /// `own_end`. A member not heard from in this epoch holds it at -1.
    pub fn high_watermark(&self, own_end: i64) -> i64 {
        self.maximal_isr()
            .filter(|n| *n != self.leader)
            .map(|n| self.followers.get(&n).map_or(-1, |f| f.log_end))
            .fold(own_end, i64::min)
    }

    /// The in-sync followers that have not caught up for `lag_max_ms`.
    pub fn lagging(&self, now_ms: i64, lag_max_ms: i64) -> Vec<NodeId> {
        self.isr
            .iter()
            .filter(|n| **n != self.leader)
            .filter(|n| self.followers.get(n).is_some_and(|f| now_ms - f.last_caught_up_ms > lag_max_ms))
            .copied()
            .collect()
    }

    /// Followers out of the ISR that now have everything up to the high
    /// watermark and everything of earlier epochs: they may rejoin.
    pub fn caught_up(&self, high_watermark: i64) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .followers
            .iter()
            .filter(|(n, f)| {
                !self.isr.contains(n) && f.log_end >= high_watermark && f.log_end >= self.epoch_start_offset
            })
            .map(|(n, _)| *n)
            .collect();
        nodes.sort_unstable();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_watermark_is_the_lowest_in_sync_log_end() {
        let mut set = ReplicaSet::new(1, 3, &[1, 2, 3], &[1, 2, 3], 100, 0);
        assert_eq!(set.high_watermark(120), -1, "followers not heard from hold it");
        set.on_fetch(2, 110, 120, 10);
        set.on_fetch(3, 105, 120, 10);
        assert_eq!(set.high_watermark(120), 105);
        set.isr = vec![1, 2];
        assert_eq!(set.high_watermark(120), 110, "out of the ISR, 3 no longer counts");
        set.pending_isr = Some(vec![1, 2, 3]);
        assert_eq!(set.high_watermark(120), 105, "a member being added counts already");
    }

    #[test]
    fn lag_is_time_since_caught_up() {
        let mut set = ReplicaSet::new(1, 0, &[1, 2], &[1, 2], 0, 0);
        set.on_fetch(2, 0, 50, 100);
        assert!(set.lagging(5_000, 10_000).is_empty());
        set.on_fetch(2, 50, 80, 6_000); // reached what the leader had at its previous fetch
        assert!(set.lagging(10_100, 10_000).is_empty(), "caught up as of that fetch");
        assert_eq!(set.lagging(10_101, 10_000), [2]);
        set.on_fetch(2, 80, 80, 17_000);
        assert!(set.lagging(17_001, 10_000).is_empty());
        set.isr = vec![1];
        assert_eq!(set.caught_up(80), [2]);
        assert!(set.caught_up(81).is_empty());
    }
}
