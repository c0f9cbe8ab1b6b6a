//! SIGINT and SIGTERM stop a run gracefully: workers stop sending, wait for
//! what is in flight, and the run reports what it measured, marked partial,
//! and removes its data. A second signal while stopping ends the process at
//! once (exit 128 + signal), for a broker that no longer answers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

struct Flags {
    /// Set by the first signal; a second one then exits.
    stopping: Arc<AtomicBool>,
    /// Which signal stopped the run (0: none).
    signal: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

fn flags() -> &'static Flags {
    FLAGS.get_or_init(|| Flags { stopping: Arc::default(), signal: Arc::default() })
}

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return Ok(());
    }
    let flags = flags();
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flags.stopping.clone())?;
        signal_hook::flag::register(signal, flags.stopping.clone())?;
        signal_hook::flag::register_usize(signal, flags.signal.clone(), signal as usize)?;
    }
    *installed = true;
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn interrupted() -> Option<i32> {
    match flags().signal.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal as i32),
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
