//! Cross-shard mailboxes: a full mesh of bounded single-producer queues (glommio's
//! channel mesh), carrying typed messages. A message that wants an answer carries
//! a [`Reply`], the sending half of a oneshot; [`Mailbox::call`] builds one and
//! awaits the answer.
//!
//! Bounds: each ordered pair of shards has a queue of `mailbox_capacity` messages;
//! a sender awaits (backpressure) while the queue is full.

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::placement::ShardId;

/// The answering half of a request sent to another shard.
pub type Reply<R> = oneshot::Sender<R>;

/// Why a message could not be delivered or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The target shard is this shard: call the local code directly.
    ToSelf,
    /// The target does not exist or has shut down.
    Closed,
    /// The target dropped the request without answering.
    NoReply,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            SendError::ToSelf => "message addressed to its own shard",
            SendError::Closed => "target shard is gone",
            SendError::NoReply => "target shard dropped the request",
        };
        f.write_str(text)
    }
}

impl std::error::Error for SendError {}

/// The sending side of this shard's links to every other shard.
pub struct Mailbox<M: Send + 'static> {
    me: ShardId,
    senders: Senders<M>,
}

impl<M: Send + 'static> Mailbox<M> {
    pub(crate) fn new(me: ShardId, senders: Senders<M>) -> Self {
        Mailbox { me, senders }
    }

    pub fn shard_id(&self) -> ShardId {
        self.me
    }

    pub fn shard_count(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Sends `msg` to shard `to`, waiting while its queue is full.
    pub async fn send(&self, to: ShardId, msg: M) -> Result<(), SendError> {
        if to == self.me {
            return Err(SendError::ToSelf);
        }
        self.senders.send_to(to, msg).await.map_err(|_| SendError::Closed)
    }

    /// Sends `msg` to shard `to` without waiting: Err(Some(msg)) gives it
    /// back when the queue is full, Err(None) when the target is gone.
    pub fn try_send(&self, to: ShardId, msg: M) -> Result<(), Option<M>> {
        if to == self.me {
            return Err(None);
        }
        match self.senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => Err(Some(msg)),
            Err(_) => Err(None),
        }
    }

    /// Sends the message `make` builds around a reply slot, and awaits the reply.
    pub async fn call<R>(&self, to: ShardId, make: impl FnOnce(Reply<R>) -> M) -> Result<R, SendError> {
        let (reply, answer) = oneshot::channel();
        self.send(to, make(reply)).await?;
        answer.await.map_err(|_| SendError::NoReply)
    }
}

/// Spawns one task per peer that hands each incoming message to `handle`.
/// `handle` must not block: it should spawn work that may wait.
pub(crate) fn serve_inbox<M, H>(mut receivers: Receivers<M>, handle: H)
where
    M: Send + 'static,
    H: Fn(M) + Clone + 'static,
{
    for (_peer, stream) in receivers.streams() {
        let handle = handle.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                handle(msg);
            }
        })
        .detach();
    }
}
