//! Spreading client connections evenly over the shards. Every shard listens
//! on the same port (SO_REUSEPORT) and the kernel picks the listener by a
//! hash of the connection's addresses, so a handful of connections (a
//! service's pool, a benchmark's producers and consumers) often lands
//! unevenly and one core serves most of the traffic while the other idles.
//! A shard that accepts a connection while another serves fewer hands it
//! over, socket and all, through the mailbox, as Seastar spreads accepted
//! connections.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use glommio::net::TcpStream;

/// The live connections of every shard, shared by all of them. A count
/// goes up when a shard is chosen to serve a connection and down when the
/// connection ends, so two shards choosing at once see each other's choice.
#[derive(Default)]
pub struct ConnectionCounts {
    per_shard: OnceLock<Vec<AtomicUsize>>,
}

impl ConnectionCounts {
    fn counts(&self, shard_count: usize) -> &[AtomicUsize] {
        let counts = self.per_shard.get_or_init(|| (0..shard_count).map(|_| AtomicUsize::new(0)).collect());
        assert_eq!(counts.len(), shard_count, "every shard sees the same shard count");
        counts
    }

    /// The shard to serve a connection accepted on `here` (of `shard_count`):
    /// `here` unless another serves fewer connections, then the one serving
    /// fewest. Counts the connection there.
    pub fn choose(&self, here: usize, shard_count: usize) -> usize {
        let counts = self.counts(shard_count);
        let mine = counts[here].load(Ordering::Acquire);
        let (least, fewest) = counts
            .iter()
            .enumerate()
            .map(|(shard, count)| (shard, count.load(Ordering::Acquire)))
            .min_by_key(|&(shard, count)| (count, shard != here))
            .expect("a node has at least one shard");
        let chosen = if fewest < mine { least } else { here };
        counts[chosen].fetch_add(1, Ordering::AcqRel);
        chosen
    }

    /// Counts a connection `shard` serves though it was not chosen for it
    /// (the chosen shard's mailbox was full).
    pub fn add(&self, shard: usize, shard_count: usize) {
        self.counts(shard_count)[shard].fetch_add(1, Ordering::AcqRel);
    }

    /// A connection `shard` was chosen for has ended (or never started).
    pub fn release(&self, shard: usize, shard_count: usize) {
        let previous = self.counts(shard_count)[shard].fetch_sub(1, Ordering::AcqRel);
        assert!(previous > 0, "a shard releases only connections it was given");
    }
}

/// Takes the socket out of an accepted stream, to send to another shard.
pub fn into_socket(stream: TcpStream) -> std::io::Result<OwnedFd> {
    // glommio's stream cannot give up its descriptor: keep a duplicate
    // (close-on-exec, as the original), and dropping the stream closes only
    // the original.
    let duplicate = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(stream);
    // SAFETY: fcntl returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// A socket handed over by another shard, as this shard's stream.
pub fn from_socket(socket: OwnedFd) -> TcpStream {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is a connected TCP socket owned by `socket`.
    unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_shard_serving_fewest() {
        let counts = ConnectionCounts::default();
        // Four connections all accepted by shard 1 of 2: two each.
        let chosen: Vec<usize> = (0..4).map(|_| counts.choose(1, 2)).collect();
        assert_eq!(chosen, vec![1, 0, 1, 0]);
        // A tie keeps the connection where it was accepted.
        assert_eq!(counts.choose(0, 2), 0);
        counts.release(0, 2);
        counts.release(0, 2);
        // Shard 0 now serves 1, shard 1 serves 2: shard 1 hands over.
        assert_eq!(counts.choose(1, 2), 0);
        assert_eq!(counts.choose(0, 2), 0, "a tie at 2 each stays");
    }
}
