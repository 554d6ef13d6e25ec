//! A bounded, multi-consumer event stream shared by the signalling client and the room peer.
//!
//! Like `tokio::sync::broadcast`, every subscriber sees every event sent after it subscribed,
//! and one that falls more than the capacity behind loses the oldest events. Unlike it, a
//! subscriber's queue holds only what is waiting: `broadcast` preallocates all its slots,
//! which at the capacity we want (4096, so bursts of presence or messages are not lost) cost
//! about 0.9 MB per peer before a single event was sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

/// Queue capacity kept after a burst drains; a larger queue is shrunk back.
const IDLE_CAPACITY: usize = 16;

struct Queue<T> {
    items: VecDeque<T>,
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

impl<T: Clone> EventSender<T> {
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

    /// Deliver to every current subscriber (dropping its oldest event when it is full).
    pub(crate) fn send(&self, event: T) {
        let mut subs = self.bus.subscribers();
        subs.retain(|w| w.strong_count() > 0);
        for sub in subs.iter().filter_map(Weak::upgrade) {
            {
                let mut q = sub.lock();
                if q.items.len() >= self.bus.capacity {
                    q.items.pop_front();
                    q.dropped += 1;
                }
                q.items.push_back(event.clone());
            }
            sub.ready.notify_one();
        }
    }

    /// A stream of the events sent from now on.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        let sub = Arc::new(Subscriber {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
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

/// A bounded stream of events. A receiver that falls more than the capacity behind loses the
/// oldest events (a warning is logged), so a slow consumer never grows memory.
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

impl<T> EventStream<T> {
    /// The next event; `None` once the source is dropped and every event was read.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut q = self.sub.lock();
                if q.dropped > 0 {
                    tracing::warn!(
                        dropped = q.dropped,
                        "event receiver lagged; oldest events dropped"
                    );
                    q.dropped = 0;
                }
                if let Some(e) = q.items.pop_front() {
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
            tx.send(i);
        }
        assert!(rx.sub.lock().items.capacity() < 64);
        let got: Vec<i32> = [
            rx.recv().await,
            rx.recv().await,
            rx.recv().await,
            rx.recv().await,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(got, vec![996, 997, 998, 999]);
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
