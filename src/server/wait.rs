//! Shard-local waiting for the network side: a byte budget that readers wait
//! on before holding more memory, and the stop signal that ends their waits
//! for new requests. Both live on one shard (no locks, no atomics).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Tasks parked until something changes; each is woken once per change.
/// A wait that is dropped (it lost a race) takes its waker out with it:
/// the shard's stop signal lives as long as the shard, and every
/// connection ever served must not leave a waker (and so its task's
/// memory) behind in it.
#[derive(Default)]
struct Waiters {
    next_key: Cell<u64>,
    parked: RefCell<BTreeMap<u64, Waker>>,
}

/// One wait's place among the [`Waiters`], removed when the wait ends.
struct Parked<'a> {
    waiters: &'a Waiters,
    key: Option<u64>,
}

impl Parked<'_> {
    fn park(&mut self, cx: &Context<'_>) {
        let waiters = self.waiters;
        let key = *self.key.get_or_insert_with(|| {
            let key = waiters.next_key.get();
            waiters.next_key.set(key + 1);
            key
        });
        // Polled again while parked: the same entry, with the current waker.
        waiters.parked.borrow_mut().insert(key, cx.waker().clone());
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.waiters.parked.borrow_mut().remove(&key);
        }
    }
}

impl Waiters {
    /// Resolves once `ready` holds, checked on each wake.
    async fn until(&self, ready: impl Fn() -> bool) {
        let mut parked = Parked { waiters: self, key: None };
        poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            parked.park(cx);
            Poll::Pending
        })
        .await
    }

    fn wake_all(&self) {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        for waker in parked.into_values() {
            waker.wake();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.parked.borrow().len()
    }
}

/// Bytes a shard (or a connection) may hold. Taking waits only while the
/// budget is spent, and then takes the whole amount even past zero: as in
/// Kafka's memory pool, a request larger than what is left can never wait
/// forever, and the overdraft is at most one step.
pub struct ByteBudget {
    available_bytes: Cell<i64>,
    waiters: Waiters,
    /// Some(total): the shard's request budget, whose held bytes are a metric.
    reported_total: Option<i64>,
}

impl ByteBudget {
    pub fn new(total_bytes: usize) -> Rc<ByteBudget> {
        let available_bytes = Cell::new(clamp(total_bytes));
        Rc::new(ByteBudget { available_bytes, waiters: Waiters::default(), reported_total: None })
    }

    /// A budget whose held bytes are the shard's `spate_request_buffer_bytes`.
    pub fn reported(total_bytes: usize) -> Rc<ByteBudget> {
        let available_bytes = Cell::new(clamp(total_bytes));
        Rc::new(ByteBudget { available_bytes, waiters: Waiters::default(), reported_total: Some(clamp(total_bytes)) })
    }

    fn report(&self) {
        if let Some(total) = self.reported_total {
            let held = (total - self.available_bytes.get()).max(0) as u64;
            crate::metrics::with(|m| m.request_buffer_bytes.set(held));
        }
    }

    /// Resolves once some budget is left.
    pub async fn wait_available(&self) {
        self.waiters.until(|| self.available_bytes.get() > 0).await
    }

    /// Takes `bytes` without waiting (an overdraft is allowed).
    pub fn take(&self, bytes: usize) {
        self.available_bytes.set(self.available_bytes.get() - clamp(bytes));
        self.report();
    }

    pub fn give_back(&self, bytes: usize) {
        let before = self.available_bytes.get();
        self.available_bytes.set(before + clamp(bytes));
        self.report();
        if before <= 0 && self.available_bytes.get() > 0 {
            self.waiters.wake_all();
        }
    }

    #[cfg(test)]
    fn available_bytes(&self) -> i64 {
        self.available_bytes.get()
    }
}

fn clamp(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX / 2)
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
pub struct Charge {
    budget: Rc<ByteBudget>,
    bytes: usize,
}

impl Charge {
    pub fn new(budget: Rc<ByteBudget>) -> Charge {
        Charge { budget, bytes: 0 }
    }

    /// Waits while the budget is spent, then adds `bytes` to this charge.
    pub async fn grow(&mut self, bytes: usize) {
        self.budget.wait_available().await;
        self.budget.take(bytes);
        self.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Raised once when the shard stops; waiters resolve from then on.
#[derive(Default)]
pub struct StopSignal {
    raised: Cell<bool>,
    waiters: Waiters,
}

impl StopSignal {
    pub fn raise(&self) {
        self.raised.set(true);
        self.waiters.wake_all();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    pub async fn raised(&self) {
        self.waiters.until(|| self.raised.get()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_overdraws_by_one_step_and_wakes_on_release() {
        glommio::LocalExecutor::default().run(async {
            let budget = ByteBudget::new(100);
            let mut first = Charge::new(budget.clone());
            first.grow(150).await; // more than the whole budget: taken at once
            assert_eq!(budget.available_bytes(), -50);
            let waiting_budget = budget.clone();
            let second = glommio::spawn_local(async move {
                let mut charge = Charge::new(waiting_budget);
                charge.grow(10).await;
                charge
            });
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(budget.available_bytes(), -50, "the second charge waits while the budget is spent");
            drop(first);
            let second = second.await;
            assert_eq!(budget.available_bytes(), 90);
            drop(second);
            assert_eq!(budget.available_bytes(), 100);
        });
    }

    #[test]
    fn stop_signal_wakes_waiters() {
        glommio::LocalExecutor::default().run(async {
            let stop = Rc::new(StopSignal::default());
            let waiter = stop.clone();
            let task = glommio::spawn_local(async move { waiter.raised().await });
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            stop.raise();
            task.await;
            assert!(stop.is_raised());
        });
    }

    #[test]
    fn waits_that_lose_a_race_leave_no_waker_behind() {
        glommio::LocalExecutor::default().run(async {
            let stop = StopSignal::default();
            let budget = ByteBudget::new(0);
            for _ in 0..3 {
                let mut stopped = std::pin::pin!(stop.raised());
                let mut available = std::pin::pin!(budget.wait_available());
                assert!(futures::poll!(stopped.as_mut()).is_pending());
                assert!(futures::poll!(stopped.as_mut()).is_pending());
                assert!(futures::poll!(available.as_mut()).is_pending());
                assert_eq!((stop.waiters.len(), budget.waiters.len()), (1, 1), "one entry per wait");
            }
            assert_eq!((stop.waiters.len(), budget.waiters.len()), (0, 0), "dropped waits are gone");
        });
    }
}
