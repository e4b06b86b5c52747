//! A timer precise to microseconds for the open-loop schedule. tokio's timer wheel has a
//! resolution of one millisecond, which at tens of thousands of requests per second would
//! send most requests up to 1 ms late and add that to every measured latency. Here sleepers
//! register in a heap and one driver task wakes them: it sleeps on tokio's timer while the
//! next deadline is far and spins (yielding to the runtime, which then polls sockets without
//! blocking) for the last stretch. Spinning costs a core, so it is meant for a load generator
//! pinned to a core of its own; with `spin` off every sleep is a plain tokio sleep.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long before a deadline the driver stops trusting tokio's timer and spins: tokio
/// rounds deadlines up to the next millisecond tick, so give it one tick and a margin.
const SPIN_WINDOW: Duration = Duration::from_micros(1500);

struct Sleeper {
    deadline: Instant,
    waker: Waker,
}

impl PartialEq for Sleeper {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}
impl Eq for Sleeper {}
impl PartialOrd for Sleeper {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sleeper {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline.cmp(&other.deadline)
    }
}

#[derive(Default)]
struct Shared {
    sleepers: RefCell<BinaryHeap<Reverse<Sleeper>>>,
    /// Wakes the driver when a sleeper arrives with a deadline earlier than it waits for.
    earlier: Notify,
}

/// A handle to the timer; clone it into each task. Single-threaded (a `LocalSet`).
#[derive(Clone)]
pub struct Clock {
    spin: bool,
    shared: Rc<Shared>,
}

impl Clock {
    /// A clock; with `spin` the caller must also run [`Clock::drive`] on the same thread.
    pub fn new(spin: bool) -> Clock {
        Clock {
            spin,
            shared: Rc::default(),
        }
    }

    /// Completes at `deadline` (a few microseconds after it when spinning).
    pub async fn sleep_until(&self, deadline: Instant) {
        if Instant::now() >= deadline {
            return;
        }
        if self.spin {
            PreciseSleep {
                deadline,
                shared: &self.shared,
            }
            .await;
        } else {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// Runs forever, waking sleepers on time; abort its task when the run is over.
    pub async fn drive(self) {
        loop {
            let next = self.wake_expired();
            match next {
                None => self.shared.earlier.notified().await,
                Some(deadline) => {
                    let now = Instant::now();
                    if deadline > now + SPIN_WINDOW {
                        tokio::select! {
                            _ = tokio::time::sleep_until((deadline - SPIN_WINDOW).into()) => {}
                            _ = self.shared.earlier.notified() => {}
                        }
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    /// Wakes every sleeper whose deadline has passed; returns the next deadline.
    fn wake_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut heap = self.shared.sleepers.borrow_mut();
        while let Some(Reverse(top)) = heap.peek() {
            if top.deadline > now {
                return Some(top.deadline);
            }
            if let Some(Reverse(sleeper)) = heap.pop() {
                sleeper.waker.wake();
            }
        }
        None
    }
}

struct PreciseSleep<'a> {
    deadline: Instant,
    shared: &'a Shared,
}

impl Future for PreciseSleep<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        // Only the driver wakes this future, after popping its entry, so each poll
        // registers at most one live entry.
        let mut heap = self.shared.sleepers.borrow_mut();
        let earliest = heap
            .peek()
            .is_none_or(|Reverse(top)| self.deadline < top.deadline);
        heap.push(Reverse(Sleeper {
            deadline: self.deadline,
            waker: cx.waker().clone(),
        }));
        if earliest {
            self.shared.earlier.notify_one();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precise_sleep_wakes_close_to_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let late = local.block_on(&rt, async {
            let clock = Clock::new(true);
            let driver = tokio::task::spawn_local(clock.clone().drive());
            let mut lateness = Vec::new();
            for i in 0..50u64 {
                let deadline = Instant::now() + Duration::from_micros(300 + 97 * i);
                clock.sleep_until(deadline).await;
                let now = Instant::now();
                assert!(now >= deadline, "woke {:?} early", deadline - now);
                lateness.push(now - deadline);
            }
            driver.abort();
            lateness.sort();
            lateness[lateness.len() / 2]
        });
        // Every sleep ends, never early. How close to the deadline it wakes is measured by
        // the benchmarks (send lag), not asserted here: a loaded machine delays any thread.
        // The median only guards against a clock that waits on some coarse tick instead.
        assert!(
            late < Duration::from_millis(200),
            "median lateness {late:?}"
        );
    }
}
