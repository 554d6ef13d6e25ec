//! The application's handle on one WebRTC data channel, with backpressure: sends go into a
//! queue of at most [`MAX_QUEUED_SENDS`] messages that the connection drains while the
//! transport's buffered amount is under [`MAX_BUFFERED_AMOUNT`]; beyond that, [`DataChannel::try_send`]
//! fails with [`DataChannelError::Overflow`] and [`DataChannel::send`] waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};

/// Bytes the transport may buffer before sends are held in the queue.
pub const MAX_BUFFERED_AMOUNT: usize = 1024 * 1024;
/// Below this buffered amount the connection resumes draining the queue.
pub const BUFFERED_AMOUNT_LOW_THRESHOLD: usize = 256 * 1024;
/// Sends queued behind a full transport before `try_send` overflows.
pub const MAX_QUEUED_SENDS: usize = 256;
/// Largest message accepted (what browsers advertise as `a=max-message-size`).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;
/// Received messages buffered per channel before new ones are dropped (and counted).
pub const INBOUND_BUFFER: usize = 1024;

/// Errors of data channel sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataChannelError {
    /// The channel (or its connection) is closed.
    #[error("data channel closed")]
    Closed,
    /// [`MAX_QUEUED_SENDS`] sends are already waiting for the transport.
    #[error("data channel send queue full ({MAX_QUEUED_SENDS} messages)")]
    Overflow,
    /// Over [`MAX_MESSAGE_SIZE`].
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl DataMessage {
    pub(crate) fn from_wire(binary: bool, data: Vec<u8>) -> DataMessage {
        if binary {
            return DataMessage::Binary(data);
        }
        match String::from_utf8(data) {
            Ok(s) => DataMessage::Text(s),
            Err(e) => DataMessage::Binary(e.into_bytes()),
        }
    }

    pub(crate) fn into_wire(self) -> (bool, Vec<u8>) {
        match self {
            DataMessage::Text(s) => (false, s.into_bytes()),
            DataMessage::Binary(b) => (true, b),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) label: String,
    pub(crate) peer_id: String,
    pub(crate) queue: Mutex<VecDeque<(bool, Vec<u8>)>>,
    /// Signalled when the queue shrinks or the channel closes.
    pub(crate) space: Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) inbound: tokio::sync::Mutex<mpsc::Receiver<DataMessage>>,
    pub(crate) dropped_inbound: AtomicU64,
    /// Wakes the connection to drain the queue.
    pub(crate) wake: Box<dyn Fn() + Send + Sync>,
}

impl Shared {
    pub(crate) fn queue(&self) -> MutexGuard<'_, VecDeque<(bool, Vec<u8>)>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.queue().clear();
        self.space.notify_waiters();
    }
}

/// One open data channel to a remote peer. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct DataChannel {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for DataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannel")
            .field("label", &self.shared.label)
            .field("peer_id", &self.shared.peer_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl DataChannel {
    pub(crate) fn new(
        label: String,
        peer_id: String,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> (DataChannel, mpsc::Sender<DataMessage>) {
        let (tx, rx) = mpsc::channel(INBOUND_BUFFER);
        let shared = Arc::new(Shared {
            label,
            peer_id,
            queue: Mutex::new(VecDeque::new()),
            space: Notify::new(),
            closed: AtomicBool::new(false),
            inbound: tokio::sync::Mutex::new(rx),
            dropped_inbound: AtomicU64::new(0),
            wake,
        });
        (DataChannel { shared }, tx)
    }

    /// The channel's label.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// The remote peer at the other end.
    pub fn peer_id(&self) -> &str {
        &self.shared.peer_id
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Messages waiting for the transport.
    pub fn queued(&self) -> usize {
        self.shared.queue().len()
    }

    /// Received messages dropped because the reader fell [`INBOUND_BUFFER`] behind.
    pub fn dropped_inbound(&self) -> u64 {
        self.shared.dropped_inbound.load(Ordering::Relaxed)
    }

    /// Queue a message without waiting; fails with [`DataChannelError::Overflow`] when
    /// [`MAX_QUEUED_SENDS`] messages are already waiting.
    pub fn try_send(&self, msg: impl Into<DataMessage>) -> Result<(), DataChannelError> {
        let (binary, data) = msg.into().into_wire();
        self.enqueue(binary, data).map_err(|(e, _)| e)
    }

    /// Queue a message, waiting while the queue is full.
    pub async fn send(&self, msg: impl Into<DataMessage>) -> Result<(), DataChannelError> {
        let (binary, mut data) = msg.into().into_wire();
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.enqueue(binary, data) {
                Ok(()) => return Ok(()),
                Err((DataChannelError::Overflow, d)) => data = d,
                Err((e, _)) => return Err(e),
            }
            notified.await;
        }
    }

    fn enqueue(&self, binary: bool, data: Vec<u8>) -> Result<(), (DataChannelError, Vec<u8>)> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err((DataChannelError::TooLarge(data.len()), data));
        }
        if self.is_closed() {
            return Err((DataChannelError::Closed, data));
        }
        {
            let mut q = self.shared.queue();
            if q.len() >= MAX_QUEUED_SENDS {
                return Err((DataChannelError::Overflow, data));
            }
            q.push_back((binary, data));
        }
        (self.shared.wake)();
        Ok(())
    }

    /// Close the channel (idempotent): queued messages are dropped, sends fail with
    /// [`DataChannelError::Closed`], the remote sees it close, and `recv` ends once what
    /// had arrived is read.
    pub fn close(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.queue().clear();
            self.shared.space.notify_waiters();
            (self.shared.wake)();
        }
    }

    /// The next received message; `None` once the channel is closed.
    pub async fn recv(&self) -> Option<DataMessage> {
        self.shared.inbound.lock().await.recv().await
    }
}

impl From<String> for DataMessage {
    fn from(s: String) -> Self {
        DataMessage::Text(s)
    }
}

impl From<&str> for DataMessage {
    fn from(s: &str) -> Self {
        DataMessage::Text(s.to_owned())
    }
}

impl From<Vec<u8>> for DataMessage {
    fn from(b: Vec<u8>) -> Self {
        DataMessage::Binary(b)
    }
}

impl From<&[u8]> for DataMessage {
    fn from(b: &[u8]) -> Self {
        DataMessage::Binary(b.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_then_send_waits_for_space() {
        let (dc, _tx) = DataChannel::new("l".into(), "p".into(), Box::new(|| {}));
        for i in 0..MAX_QUEUED_SENDS {
            dc.try_send(format!("m{i}")).expect("queued");
        }
        assert_eq!(dc.try_send("x"), Err(DataChannelError::Overflow));
        let dc2 = dc.clone();
        let waiter = tokio::spawn(async move { dc2.send("y").await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        dc.shared.queue().pop_front();
        dc.shared.space.notify_waiters();
        waiter.await.expect("join").expect("sent");
        assert_eq!(dc.queued(), MAX_QUEUED_SENDS);
        dc.shared.close();
        assert_eq!(dc.try_send("z"), Err(DataChannelError::Closed));
        assert_eq!(
            dc.try_send(vec![0u8; MAX_MESSAGE_SIZE + 1]),
            Err(DataChannelError::TooLarge(MAX_MESSAGE_SIZE + 1))
        );
    }
}
