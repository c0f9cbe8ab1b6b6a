//! Shard-local waiting for the network side: a byte budget that readers wait
//! on before holding more memory, and the stop signal that ends their waits
//! for new requests. Both live on one shard (no locks, no atomics).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Tasks parked until something changes; each is woken once per change.
#[derive(Default)]
struct Waiters(RefCell<Vec<Waker>>);

impl Waiters {
    fn park(&self, cx: &Context<'_>) {
        let mut wakers = self.0.borrow_mut();
        // A future polled again while parked must not pile up copies of itself.
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
    }

    fn wake_all(&self) {
        for waker in self.0.take() {
            waker.wake();
        }
    }
}

/// Bytes a shard (or a connection) may hold. Taking waits only while the
/// budget is spent, and then takes the whole amount even past zero: as in
/// Kafka's memory pool, a request larger than what is left can never wait
/// forever, and the overdraft is at most one step.
pub struct ByteBudget {
    available_bytes: Cell<i64>,
    waiters: Waiters,
}

impl ByteBudget {
    pub fn new(total_bytes: usize) -> Rc<ByteBudget> {
        Rc::new(ByteBudget { available_bytes: Cell::new(clamp(total_bytes)), waiters: Waiters::default() })
    }

    /// Resolves once some budget is left.
    pub async fn wait_available(&self) {
        poll_fn(|cx| {
            if self.available_bytes.get() > 0 {
                return Poll::Ready(());
            }
            self.waiters.park(cx);
            Poll::Pending
        })
        .await
    }

    /// Takes `bytes` without waiting (an overdraft is allowed).
    pub fn take(&self, bytes: usize) {
        self.available_bytes.set(self.available_bytes.get() - clamp(bytes));
    }

    pub fn give_back(&self, bytes: usize) {
        let before = self.available_bytes.get();
        self.available_bytes.set(before + clamp(bytes));
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
        poll_fn(|cx| {
            if self.raised.get() {
                return Poll::Ready(());
            }
            self.waiters.park(cx);
            Poll::Pending
        })
        .await
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
}
