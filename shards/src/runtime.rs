//! Starting and stopping the shards: one glommio executor per core, pinned,
//! each joined to the mailbox mesh, each running the caller's shard body.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::mailbox::{serve_inbox, Mailbox};
use crate::placement::ShardId;

/// How the shards are built. Every field is a bound or a choice with a default.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Executors to start; 0 means one per available core.
    pub shard_count: usize,
    /// io_uring registered buffer memory per shard. It counts against
    /// RLIMIT_MEMLOCK for unprivileged users, so it stays small.
    pub io_memory_bytes: usize,
    /// Messages each ordered pair of shards may have queued.
    pub mailbox_capacity: usize,
    /// Pin shard i to the i-th allowed core (when there are enough cores).
    pub pin_to_cores: bool,
    /// Thread name prefix.
    pub name: String,
    /// Busy-poll this long before an idle shard sleeps (trades CPU for wake-up latency).
    pub spin_before_park_us: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shard_count: 0,
            io_memory_bytes: 1 << 20,
            mailbox_capacity: 1024,
            pin_to_cores: true,
            name: "shard".to_string(),
            spin_before_park_us: 0,
        }
    }
}

/// What one shard's body receives: its identity, its mailbox to the others,
/// its inbox, and the stop flag.
pub struct Shard<M: Send + 'static> {
    pub id: ShardId,
    pub count: usize,
    pub mailbox: Rc<Mailbox<M>>,
    inbox: Option<Receivers<M>>,
    stop: Arc<AtomicBool>,
}

impl<M: Send + 'static> Shard<M> {
    /// Starts delivering messages from the other shards to `handle`.
    /// Can be called once; a second call is a bug.
    pub fn serve_inbox<H: Fn(M) + Clone + 'static>(&mut self, handle: H) {
        let inbox = self.inbox.take().expect("serve_inbox called twice");
        serve_inbox(inbox, handle);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Resolves once [`ShardRuntime::stop`] has been called (polled every 50 ms).
    pub async fn stopped(&self) {
        while !self.stop_requested() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The running shards.
pub struct ShardRuntime {
    handles: Vec<ExecutorJoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl ShardRuntime {
    /// Starts the shards, each running `body(shard)` to completion.
    pub fn start<M, F, Fut>(config: &RuntimeConfig, body: F) -> io::Result<ShardRuntime>
    where
        M: Send + 'static,
        F: Fn(Shard<M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        probe_io_uring()?;
        let cores = allowed_cores();
        let count = if config.shard_count == 0 { cores.len().max(1) } else { config.shard_count };
        let mesh = MeshBuilder::full(count, config.mailbox_capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(count);
        for id in 0..count {
            let placement = match cores.get(id) {
                Some(&cpu) if config.pin_to_cores && count <= cores.len() => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let (mesh, stop, body) = (mesh.clone(), stop.clone(), body.clone());
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("{}-{id}", config.name))
                .io_memory(config.io_memory_bytes)
                .spin_before_park(Duration::from_micros(config.spin_before_park_us))
                .spawn(move || async move {
                    let (senders, receivers) = mesh.join().await.expect("shard mesh join");
                    let mailbox = Rc::new(Mailbox::new(id, senders));
                    body(Shard { id, count, mailbox, inbox: Some(receivers), stop }).await;
                })
                .map_err(|e| io::Error::other(format!("cannot start shard {id}: {e}")))?;
            handles.push(handle);
        }
        Ok(ShardRuntime { handles, stop })
    }

    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    /// Asks every shard to stop; their bodies see it through [`Shard::stopped`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// A handle that can request the stop from another thread (a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every shard body to return.
    pub fn join(self) -> io::Result<()> {
        for handle in self.handles {
            handle.join().map_err(|e| io::Error::other(format!("shard failed: {e}")))?;
        }
        Ok(())
    }
}

/// Runs `tick` every `interval` on the current shard until it returns false.
pub fn periodic<F, Fut>(interval: Duration, mut tick: F) -> glommio::Task<()>
where
    F: FnMut() -> Fut + 'static,
    Fut: Future<Output = bool> + 'static,
{
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            if !tick().await {
                break;
            }
        }
    })
}

/// The cores this process may run on, in order.
fn allowed_cores() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a plain bitmask we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// Checks that this process may create an io_uring, so that a machine without
/// it fails at start with a reason instead of deep inside glommio.
pub fn probe_io_uring() -> io::Result<()> {
    let mut params = [0u8; 120]; // struct io_uring_params, zeroed
                                 // SAFETY: io_uring_setup reads and writes only `params`; we close the fd.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd was just returned to us by the kernel.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = io::Error::last_os_error();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
    Err(io::Error::other(format!(
        "io_uring is not available to this process ({err}); spate needs it for storage and network. \
         Check kernel.io_uring_disabled (now {:?}), seccomp profiles (containers often block io_uring), \
         and that the kernel is 5.8 or newer",
        disabled.trim()
    )))
}
