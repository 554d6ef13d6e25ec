//! A bounded, multi-consumer event stream shared by the signalling client and the room peer.

use tokio::sync::broadcast;

/// A bounded stream of events. A receiver that falls more than the capacity behind loses the
/// oldest events (a warning is logged), so a slow consumer never grows memory.
#[derive(Debug)]
pub struct EventStream<T> {
    rx: broadcast::Receiver<T>,
}

impl<T: Clone> EventStream<T> {
    pub(crate) fn new(rx: broadcast::Receiver<T>) -> Self {
        EventStream { rx }
    }

    /// The next event; `None` once the source is dropped.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(dropped = n, "event receiver lagged; oldest events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
