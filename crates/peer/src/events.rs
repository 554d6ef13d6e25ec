//! A bounded, multi-consumer event stream shared by the signalling client and the room peer.
//!
//! Like `tokio::sync::broadcast`, every subscriber sees every event sent after it subscribed,
//! and one that falls more than the capacity behind loses events and is told so (the next
//! read returns a `Lagged { dropped }` event, as `broadcast` returns `RecvError::Lagged`).
//! Unlike it:
//! - what is lost is chosen: the oldest *droppable* event (application data); terminal and
//!   membership events ([`BusEvent::is_critical`]: `Fatal`, `PeerLeft`, `Track`,
//!   `ConnectionReset`, presence, …) are kept past the capacity, up to twice it, and only a
//!   reader that far behind loses one of those (still told);
//! - a subscriber's queue holds only what is waiting: `broadcast` preallocates all its slots,
//!   which at the capacity we want (4096, so bursts of presence or messages are not lost) cost
//!   about 0.9 MB per peer before a single event was sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

/// Queue capacity kept after a burst drains; a larger queue is shrunk back.
const IDLE_CAPACITY: usize = 16;

/// What the bus needs to know of its events.
pub trait BusEvent: Clone {
    /// Never dropped for a slow reader until its queue holds twice the capacity: terminal
    /// and membership events, which callers depend on.
    fn is_critical(&self) -> bool;
    /// The event that tells a reader `dropped` events were lost before its next one.
    fn lagged(dropped: u64) -> Self;
}

struct Queue<T> {
    items: VecDeque<T>,
    /// How many of `items` are not critical (a full queue of critical events is not scanned).
    droppable: usize,
    dropped: u64,
    closed: bool,
}

struct Subscriber<T> {
    queue: Mutex<Queue<T>>,
    ready: Notify,
}

impl<T> Subscriber<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Bus<T> {
    subscribers: Mutex<Vec<Weak<Subscriber<T>>>>,
    capacity: usize,
    senders: AtomicUsize,
}

impl<T> Bus<T> {
    fn subscribers(&self) -> MutexGuard<'_, Vec<Weak<Subscriber<T>>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half: cheap to clone; the streams end when the last clone is dropped.
pub(crate) struct EventSender<T> {
    bus: Arc<Bus<T>>,
}

impl<T> std::fmt::Debug for EventSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("capacity", &self.bus.capacity)
            .finish_non_exhaustive()
    }
}

impl<T: BusEvent> EventSender<T> {
    /// A bus whose subscribers each hold at most `capacity` unread events.
    pub(crate) fn new(capacity: usize) -> Self {
        EventSender {
            bus: Arc::new(Bus {
                subscribers: Mutex::new(Vec::new()),
                capacity: capacity.max(1),
                senders: AtomicUsize::new(1),
            }),
        }
    }

    /// Deliver to every current subscriber. The overflow policy, per subscriber: at the
    /// capacity, its oldest droppable event goes (or this one, if droppable and every queued
    /// one is critical); a critical event is queued past the capacity, up to twice it, where
    /// the oldest event of any kind goes. Every loss is counted and reported to the reader.
    pub(crate) fn send(&self, event: T) {
        let critical = event.is_critical();
        let mut subs = self.bus.subscribers();
        subs.retain(|w| w.strong_count() > 0);
        for sub in subs.iter().filter_map(Weak::upgrade) {
            {
                let mut q = sub.lock();
                let mut keep = true;
                if q.items.len() >= self.bus.capacity {
                    let oldest_droppable = if q.droppable > 0 {
                        q.items.iter().position(|e| !e.is_critical())
                    } else {
                        None
                    };
                    match oldest_droppable {
                        Some(i) => {
                            q.items.remove(i);
                            q.droppable -= 1;
                            q.dropped += 1;
                        }
                        None if !critical => {
                            keep = false;
                            q.dropped += 1;
                        }
                        None if q.items.len() >= 2 * self.bus.capacity => {
                            q.items.pop_front();
                            q.dropped += 1;
                        }
                        None => {}
                    }
                }
                if keep {
                    q.droppable += usize::from(!critical);
                    q.items.push_back(event.clone());
                }
            }
            sub.ready.notify_one();
        }
    }

    /// A stream of the events sent from now on.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        let sub = Arc::new(Subscriber {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                droppable: 0,
                dropped: 0,
                closed: false,
            }),
            ready: Notify::new(),
        });
        self.bus.subscribers().push(Arc::downgrade(&sub));
        EventStream { sub }
    }
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        self.bus.senders.fetch_add(1, Ordering::Relaxed);
        EventSender {
            bus: self.bus.clone(),
        }
    }
}

impl<T> Drop for EventSender<T> {
    fn drop(&mut self) {
        if self.bus.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        for sub in self.bus.subscribers().drain(..).filter_map(|w| w.upgrade()) {
            sub.lock().closed = true;
            sub.ready.notify_one();
        }
    }
}

/// A bounded stream of events. A receiver that falls more than the capacity behind loses
/// events — application data first, terminal and membership events only past twice the
/// capacity — and its next read returns the `Lagged` event saying how many (a warning is
/// logged too), so a slow consumer never grows memory without bound and never loses an event
/// silently.
pub struct EventStream<T> {
    sub: Arc<Subscriber<T>>,
}

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("pending", &self.sub.lock().items.len())
            .finish()
    }
}

impl<T: BusEvent> EventStream<T> {
    /// The next event; `None` once the source is dropped and every event was read. After a
    /// loss, the `Lagged { dropped }` event comes first.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut q = self.sub.lock();
                if q.dropped > 0 {
                    let dropped = std::mem::take(&mut q.dropped);
                    tracing::warn!(dropped, "event receiver lagged; events dropped");
                    return Some(T::lagged(dropped));
                }
                if let Some(e) = q.items.pop_front() {
                    q.droppable -= usize::from(!e.is_critical());
                    if q.items.is_empty() && q.items.capacity() > IDLE_CAPACITY {
                        q.items.shrink_to(IDLE_CAPACITY);
                    }
                    return Some(e);
                }
                if q.closed {
                    return None;
                }
            }
            // A permit stored by `notify_one` since the check above makes this return at once.
            self.sub.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test events: odd numbers are critical; a lag report is the negated count.
    impl BusEvent for i32 {
        fn is_critical(&self) -> bool {
            self % 2 != 0
        }
        fn lagged(dropped: u64) -> Self {
            -(dropped as i32)
        }
    }

    impl BusEvent for &'static str {
        fn is_critical(&self) -> bool {
            false
        }
        fn lagged(_: u64) -> Self {
            "lagged"
        }
    }

    async fn drain(rx: &mut EventStream<i32>, n: usize) -> Vec<i32> {
        let mut got = Vec::new();
        for _ in 0..n {
            got.extend(rx.recv().await);
        }
        got
    }

    #[tokio::test]
    async fn critical_events_survive_a_flood_and_the_loss_is_reported() {
        let tx = EventSender::new(4);
        let mut rx = tx.subscribe();
        // A critical event, then a flood of droppable ones, then another critical one.
        tx.send(1);
        for i in 0..100 {
            tx.send(2 * i);
        }
        tx.send(3);
        // 100 droppable events sent, 2 kept: 98 lost; both critical ones kept, in order.
        let got = drain(&mut rx, 5).await;
        assert_eq!(got, vec![-98, 1, 196, 198, 3]);
    }

    #[tokio::test]
    async fn critical_events_past_twice_the_capacity_are_lost_but_reported() {
        let tx = EventSender::new(4);
        let mut rx = tx.subscribe();
        for i in 0..20 {
            tx.send(2 * i + 1);
        }
        // Kept up to 8; the 12 oldest lost.
        let got = drain(&mut rx, 9).await;
        assert_eq!(got, vec![-12, 25, 27, 29, 31, 33, 35, 37, 39]);
        // A droppable event to a queue full of critical ones is itself the one lost.
        for i in 0..4 {
            tx.send(2 * i + 1);
        }
        tx.send(100);
        assert_eq!(drain(&mut rx, 5).await, vec![-1, 1, 3, 5, 7]);
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_then_the_end() {
        let tx = EventSender::new(8);
        let mut a = tx.subscribe();
        tx.send(1);
        let mut b = tx.subscribe();
        let tx2 = tx.clone();
        tx2.send(2);
        drop(tx);
        assert_eq!(a.recv().await, Some(1));
        assert_eq!(a.recv().await, Some(2));
        assert_eq!(b.recv().await, Some(2));
        drop(tx2);
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, None);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_memory_stays_bounded() {
        let tx = EventSender::new(4);
        let mut rx = tx.subscribe();
        for i in 0..1000 {
            tx.send(2 * i); // droppable
        }
        assert!(rx.sub.lock().items.capacity() < 64);
        assert_eq!(drain(&mut rx, 5).await, vec![-996, 1992, 1994, 1996, 1998]);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_and_dropped_ones_are_forgotten() {
        let tx = EventSender::new(4);
        let mut rx = tx.subscribe();
        drop(tx.subscribe());
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("hello");
        assert_eq!(waiter.await.ok().flatten(), Some("hello"));
        tx.send("again");
        assert!(tx.bus.subscribers().is_empty());
    }
}
