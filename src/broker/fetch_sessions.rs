//! Incremental fetch sessions (KIP-227), one cache per shard for the
//! connections it serves. A session remembers what a fetcher (a follower or
//! a consumer) asked for last time: each partition's fetch offset, byte
//! limit and leader epoch, and the high watermark and log start it was last
//! told. A request then names only the partitions that changed, and the
//! response carries only those with news (records, a moved high watermark or
//! log start, an error), which keeps the fetch of thousands of idle
//! partitions small both ways.
//!
//! The cache is bounded in sessions (`max_incremental_fetch_session_cache_slots`)
//! and in the partitions they hold (`max_incremental_fetch_session_partitions`);
//! when it is full, a session idle for [`SESSION_EVICTION_MS`] makes room,
//! then a small consumer session for a larger or a follower's one, as
//! Kafka's cache does; otherwise the fetch goes on without a session.
//! A session lives on the shard of the connection that created it: a client
//! that reconnects to another shard gets FETCH_SESSION_ID_NOT_FOUND and
//! starts a new one, as after a broker restart.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

/// A session unused this long may be evicted for a new one (Kafka's
/// `min.incremental.fetch.session.eviction.ms`, fixed there too).
pub const SESSION_EVICTION_MS: u64 = 120_000;

/// Request epochs (KIP-227): -1 is a sessionless fetch (closing any session
/// named), 0 a full fetch that asks for a new session.
pub const FINAL_EPOCH: i32 = -1;
pub const INITIAL_EPOCH: i32 = 0;

/// One partition as a fetch asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub topic: Arc<str>,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
    pub current_leader_epoch: i32,
}

/// What a fetch found for one partition, for deciding whether an
/// incremental response must carry it.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub has_records: bool,
    pub error: i16,
}

#[derive(Debug)]
struct Cached {
    wanted: Wanted,
    /// What the fetcher was last told (-1: nothing yet, or an error since).
    high_watermark: i64,
    log_start_offset: i64,
    /// Position in the session's order (see [`Session::order`]).
    order: u64,
}

type Key = (Arc<str>, i32);

#[derive(Debug)]
struct Session {
    /// The epoch the next request must carry.
    epoch: i32,
    follower: bool,
    last_used: Instant,
    partitions: HashMap<Key, Cached>,
    /// The session's partitions in fetch order: one that returned records
    /// moves to the back, so that a response budget too small for all of
    /// them is shared round-robin (as Kafka's cache does).
    order: BTreeMap<u64, Key>,
    next_order: u64,
}

impl Session {
    fn push_back(&mut self, key: Key) -> u64 {
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(order, key);
        order
    }

    fn upsert(&mut self, wanted: Wanted) {
        let key: Key = (wanted.topic.clone(), wanted.partition);
        if let Some(cached) = self.partitions.get_mut(&key) {
            cached.wanted = wanted;
            return;
        }
        // New to the session: -1 told, so its first answer carries it.
        let order = self.push_back(key.clone());
        self.partitions.insert(key, Cached { wanted, high_watermark: -1, log_start_offset: -1, order });
    }

    fn move_back(&mut self, key: &Key) {
        let Some(old) = self.partitions.get(key).map(|c| c.order) else { return };
        self.order.remove(&old);
        let order = self.push_back(key.clone());
        self.partitions.get_mut(key).expect("present").order = order;
    }

    fn forget(&mut self, key: &Key) {
        if let Some(cached) = self.partitions.remove(key) {
            self.order.remove(&cached.order);
        }
    }

    fn wanted_in_order(&self) -> Vec<Wanted> {
        self.order.values().map(|key| self.partitions[key].wanted.clone()).collect()
    }
}

/// Why an incremental request got no session.
pub type SessionError = i16;

pub struct FetchSessionCache {
    sessions: HashMap<i32, Session>,
    partitions: usize,
    max_sessions: usize,
    max_partitions: usize,
    ids: RandomState,
    id_counter: u64,
}

impl FetchSessionCache {
    pub fn new(max_sessions: usize, max_partitions: usize) -> FetchSessionCache {
        FetchSessionCache {
            sessions: HashMap::new(),
            partitions: 0,
            max_sessions,
            max_partitions,
            ids: RandomState::new(),
            id_counter: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Partitions held by every session.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Drops a session (a full or sessionless fetch naming it closes it).
    pub fn close(&mut self, id: i32) {
        if let Some(session) = self.sessions.remove(&id) {
            self.partitions -= session.partitions.len();
        }
        self.check();
    }

    /// An incremental fetch of session `id` at `epoch`: applies the changed
    /// and forgotten partitions and returns every partition to fetch, in the
    /// session's order. A session left empty is closed (the answer is then
    /// empty, Kafka's sessionless response).
    pub fn incremental(
        &mut self,
        id: i32,
        epoch: i32,
        changed: Vec<Wanted>,
        forgotten: Vec<Key>,
        now: Instant,
    ) -> Result<Vec<Wanted>, SessionError> {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(ResponseError::FetchSessionIdNotFound.code());
        };
        if session.epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch.code());
        }
        let before = session.partitions.len();
        // Kafka's order: a partition both named and forgotten is forgotten.
        for wanted in changed {
            session.upsert(wanted);
        }
        for key in &forgotten {
            session.forget(key);
        }
        let after = session.partitions.len();
        self.partitions = self.partitions + after - before;
        if after == 0 || self.partitions > self.max_partitions {
            // Empty, or grown past the cache's bound: the client starts over
            // (with a full fetch, which stays sessionless if still too large).
            self.close(id);
            return if after == 0 { Ok(Vec::new()) } else { Err(ResponseError::FetchSessionIdNotFound.code()) };
        }
        let session = self.sessions.get_mut(&id).expect("looked up above");
        session.epoch = next_epoch(session.epoch);
        session.last_used = now;
        Ok(session.wanted_in_order())
    }

    /// After a full fetch: a new session holding its partitions and what was
    /// found for them, or 0 when the cache has no room for it.
    pub fn create(&mut self, follower: bool, partitions: Vec<(Wanted, Found)>, now: Instant) -> i32 {
        if partitions.is_empty() || !self.make_room(follower, partitions.len(), now) {
            return 0;
        }
        let mut session = Session {
            epoch: next_epoch(INITIAL_EPOCH),
            follower,
            last_used: now,
            partitions: HashMap::with_capacity(partitions.len()),
            order: BTreeMap::new(),
            next_order: 0,
        };
        for (wanted, found) in partitions {
            let key: Key = (wanted.topic.clone(), wanted.partition);
            if session.partitions.contains_key(&key) {
                continue; // a partition named twice is fetched once
            }
            let order = session.push_back(key.clone());
            let (high_watermark, log_start_offset) = told(&found);
            session.partitions.insert(key, Cached { wanted, high_watermark, log_start_offset, order });
        }
        let id = self.new_id();
        self.partitions += session.partitions.len();
        self.sessions.insert(id, session);
        self.check();
        id
    }

    /// Which of an incremental fetch's partitions (`results`, in the order
    /// [`Self::incremental`] gave) the response must carry; remembers what it
    /// tells, and moves the partitions that returned records to the back.
    pub fn respond(&mut self, id: i32, results: &[(Key, Found)]) -> Vec<bool> {
        let Some(session) = self.sessions.get_mut(&id) else {
            return vec![true; results.len()]; // closed meanwhile: tell everything
        };
        let mut carry = Vec::with_capacity(results.len());
        for (key, found) in results {
            let Some(cached) = session.partitions.get_mut(key) else {
                carry.push(true);
                continue;
            };
            let (high_watermark, log_start_offset) = told(found);
            let news = found.has_records
                || found.error != 0
                || cached.high_watermark != high_watermark
                || cached.log_start_offset != log_start_offset;
            cached.high_watermark = high_watermark;
            cached.log_start_offset = log_start_offset;
            if found.has_records {
                session.move_back(key);
            }
            carry.push(news);
        }
        carry
    }

    /// Room for a session of `partitions`: the cache has a free slot, or an
    /// idle session, or (for a follower, or a larger consumer session) the
    /// smallest consumer session, is evicted.
    fn make_room(&mut self, follower: bool, partitions: usize, now: Instant) -> bool {
        if partitions > self.max_partitions {
            return false;
        }
        let idle = Duration::from_millis(SESSION_EVICTION_MS);
        while self.sessions.len() >= self.max_sessions || self.partitions + partitions > self.max_partitions {
            let stale = self
                .sessions
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.last_used) >= idle)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            let smallest_consumer = self
                .sessions
                .iter()
                .filter(|(_, s)| !s.follower && (follower || s.partitions.len() < partitions))
                .min_by_key(|(_, s)| s.partitions.len())
                .map(|(id, _)| *id);
            match stale.or(smallest_consumer) {
                Some(id) => self.close(id),
                None => return false,
            }
        }
        true
    }

    /// A fresh positive id, unguessable by other clients (ids are not tied to connections).
    fn new_id(&mut self) -> i32 {
        loop {
            self.id_counter += 1;
            let mut hasher = self.ids.build_hasher();
            hasher.write_u64(self.id_counter);
            let id = (hasher.finish() as i32) & i32::MAX;
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    fn check(&self) {
        debug_assert_eq!(self.partitions, self.sessions.values().map(|s| s.partitions.len()).sum::<usize>());
        debug_assert!(self.sessions.len() <= self.max_sessions);
    }
}

/// What a response tells of a partition: an error tells no offsets, so the
/// next successful fetch must tell them again.
fn told(found: &Found) -> (i64, i64) {
    if found.error != 0 {
        (-1, -1)
    } else {
        (found.high_watermark, found.log_start_offset)
    }
}

/// The epoch after `epoch`: they wrap from i32::MAX to 1 (0 and -1 are special).
pub fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(topic: &str, partition: i32, fetch_offset: i64) -> Wanted {
        Wanted { topic: Arc::from(topic), partition, fetch_offset, max_bytes: 1 << 20, current_leader_epoch: -1 }
    }

    fn found(high_watermark: i64, has_records: bool) -> Found {
        Found { high_watermark, log_start_offset: 0, has_records, error: 0 }
    }

    fn key(topic: &str, partition: i32) -> Key {
        (Arc::from(topic), partition)
    }

    #[test]
    fn incremental_fetches_carry_only_news_and_rotate() {
        let now = Instant::now();
        let mut cache = FetchSessionCache::new(10, 100);
        let id =
            cache.create(false, vec![(wanted("t", 0, 5), found(5, false)), (wanted("t", 1, 7), found(9, true))], now);
        assert_ne!(id, 0);
        assert_eq!(cache.incremental(id, 2, vec![], vec![], now), Err(ResponseError::InvalidFetchSessionEpoch.code()));
        assert_eq!(
            cache.incremental(id + 1, 1, vec![], vec![], now),
            Err(ResponseError::FetchSessionIdNotFound.code())
        );
        // Partition 1 moved on: only it is named; both are fetched.
        let all = cache.incremental(id, 1, vec![wanted("t", 1, 9)], vec![], now).unwrap();
        assert_eq!(all, [wanted("t", 0, 5), wanted("t", 1, 9)]);
        // Nothing new on 0; records on 1: only 1 is told.
        let carry = cache.respond(id, &[(key("t", 0), found(5, false)), (key("t", 1), found(9, true))]);
        assert_eq!(carry, [false, true]);
        // Partition 0 returned records: told, and moved behind 1.
        let all = cache.incremental(id, 2, vec![], vec![], now).unwrap();
        assert_eq!(all[0].partition, 0);
        let carry = cache.respond(id, &[(key("t", 0), found(6, true)), (key("t", 1), found(9, false))]);
        assert_eq!(carry, [true, false]);
        let all = cache.incremental(id, 3, vec![], vec![], now).unwrap();
        assert_eq!(all.iter().map(|w| w.partition).collect::<Vec<_>>(), [1, 0], "records move a partition back");
        // Forgetting every partition closes the session.
        assert_eq!(cache.incremental(id, 4, vec![], vec![key("t", 0), key("t", 1)], now), Ok(vec![]));
        assert!(cache.is_empty());
        assert_eq!(cache.partitions(), 0);
    }

    #[test]
    fn errors_are_always_told_and_reset_what_was_told() {
        let now = Instant::now();
        let mut cache = FetchSessionCache::new(10, 100);
        let id = cache.create(true, vec![(wanted("t", 0, 5), found(5, false))], now);
        cache.incremental(id, 1, vec![], vec![], now).unwrap();
        let error = Found { error: 6, ..found(5, false) };
        assert_eq!(cache.respond(id, &[(key("t", 0), error)]), [true]);
        cache.incremental(id, 2, vec![], vec![], now).unwrap();
        assert_eq!(cache.respond(id, &[(key("t", 0), found(5, false))]), [true], "offsets told again after an error");
    }

    #[test]
    fn a_full_cache_evicts_idle_then_small_consumer_sessions() {
        let now = Instant::now();
        let mut cache = FetchSessionCache::new(2, 1000);
        let small = cache.create(false, vec![(wanted("t", 0, 0), found(0, false))], now);
        let follower = cache.create(true, vec![(wanted("t", 1, 0), found(0, false))], now);
        assert_eq!(cache.len(), 2);
        // A consumer session no larger than the smallest gets no room.
        assert_eq!(cache.create(false, vec![(wanted("u", 0, 0), found(0, false))], now), 0);
        // A larger one evicts the small consumer session, never the follower's.
        let big: Vec<_> = (0..3).map(|p| (wanted("u", p, 0), found(0, false))).collect();
        let larger = cache.create(false, big, now);
        assert_ne!(larger, 0);
        assert_eq!(cache.incremental(small, 1, vec![], vec![], now), Err(ResponseError::FetchSessionIdNotFound.code()));
        assert!(cache.incremental(follower, 1, vec![], vec![], now).is_ok());
        // Later, the idle follower session makes room for anyone.
        let later = now + Duration::from_millis(SESSION_EVICTION_MS + 1);
        cache.incremental(larger, 1, vec![], vec![], later).unwrap();
        assert_ne!(cache.create(false, vec![(wanted("v", 0, 0), found(0, false))], later), 0);
        assert_eq!(
            cache.incremental(follower, 2, vec![], vec![], later),
            Err(ResponseError::FetchSessionIdNotFound.code())
        );
        assert_eq!(cache.partitions(), 4);
    }

    #[test]
    fn partitions_are_bounded() {
        let now = Instant::now();
        let mut cache = FetchSessionCache::new(10, 3);
        let four: Vec<_> = (0..4).map(|p| (wanted("t", p, 0), found(0, false))).collect();
        assert_eq!(cache.create(true, four, now), 0, "larger than the whole cache: sessionless");
        let id = cache.create(true, vec![(wanted("t", 0, 0), found(0, false))], now);
        let grow: Vec<_> = (1..4).map(|p| wanted("t", p, 0)).collect();
        assert_eq!(cache.incremental(id, 1, grow, vec![], now), Err(ResponseError::FetchSessionIdNotFound.code()));
        assert_eq!(cache.partitions(), 0, "the session that outgrew the bound is closed");
    }

    #[test]
    fn epochs_wrap_past_zero() {
        assert_eq!(next_epoch(1), 2);
        assert_eq!(next_epoch(i32::MAX), 1);
    }
}
