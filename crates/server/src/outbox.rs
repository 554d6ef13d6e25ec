//! A connection's outbound queue: FIFO, bounded in bytes, with a close request at its tail.
//!
//! The hub pushes frames while it holds its lock, so the order of frames across the whole
//! server is the order of hub operations (spec §1.15). The connection's writer drains it.
//!
//! **Slow-consumer policy:** when queued bytes would exceed the cap, the connection is
//! *killed*: its socket is dropped at once, without a close frame (the client sees 1006 and
//! reconnects), and the hub delivers its `left` presence. One slow reader can therefore never
//! grow server memory beyond the cap or delay anyone else.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use parlor_protocol::CloseCode;

/// One serialized text frame, cheap to clone for fan-out.
pub(crate) type Frame = Utf8Bytes;

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Send these frames, in order.
    Frames(Vec<Frame>),
    /// All frames are sent: send this close frame, then stop.
    Close(CloseCode, &'static str),
    /// Drop the socket now (slow consumer or dead peer).
    Kill,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<(CloseCode, &'static str)>,
    killed: bool,
}

/// The per-connection queue shared by the hub (producer) and the writer (consumer).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    cap_bytes: usize,
    /// Wakes the writer (single consumer: `notify_one` keeps a permit).
    ready: Notify,
    /// Wakes the connection's kill watcher.
    killed: Notify,
}

impl Outbox {
    /// A queue that kills its connection above `cap_bytes` of pending frames.
    pub fn new(cap_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            cap_bytes,
            ready: Notify::new(),
            killed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update
        // is a single push/pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a frame. Returns `false` if the connection is closing, dead, or was just killed
    /// for exceeding the cap.
    pub fn push(&self, frame: Frame) -> bool {
        let mut s = self.lock();
        if s.killed || s.close.is_some() {
            return false;
        }
        if s.bytes + frame.len() > self.cap_bytes {
            s.killed = true;
            s.frames.clear();
            s.bytes = 0;
            drop(s);
            self.killed.notify_one();
            self.ready.notify_one();
            return false;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Ask the writer to send `code` after the frames already queued. Later pushes are dropped.
    /// The first close request wins.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        let mut s = self.lock();
        if s.close.is_none() && !s.killed {
            s.close = Some((code, reason));
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Drop the connection without a close frame.
    pub fn kill(&self) {
        self.lock().killed = true;
        self.killed.notify_one();
        self.ready.notify_one();
    }

    /// Whether a close or kill was requested.
    pub fn is_closing(&self) -> bool {
        let s = self.lock();
        s.killed || s.close.is_some()
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Take everything that is ready, or wait for it.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut s = self.lock();
                if s.killed {
                    return Next::Kill;
                }
                if !s.frames.is_empty() {
                    s.bytes = 0;
                    return Next::Frames(std::mem::take(&mut s.frames).into());
                }
                if let Some((code, reason)) = s.close {
                    return Next::Close(code, reason);
                }
            }
            self.ready.notified().await;
        }
    }

    /// Resolves once the connection is killed.
    pub async fn wait_killed(&self) {
        loop {
            if self.lock().killed {
                return;
            }
            self.killed.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> Frame {
        Utf8Bytes::from_static(s)
    }

    #[tokio::test]
    async fn fifo_then_close() {
        let o = Outbox::new(100);
        assert!(o.push(f("a")));
        assert!(o.push(f("bb")));
        o.close(CloseCode::GOING_AWAY, "bye");
        assert!(!o.push(f("late")));
        match o.next().await {
            Next::Frames(v) => assert_eq!(v, vec![f("a"), f("bb")]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            o.next().await,
            Next::Close(CloseCode::GOING_AWAY, "bye")
        ));
    }

    #[tokio::test]
    async fn overflow_kills() {
        let o = Outbox::new(4);
        assert!(o.push(f("abc")));
        assert!(!o.push(f("de")));
        assert!(o.is_closing());
        assert_eq!(o.queued_bytes(), 0);
        assert!(matches!(o.next().await, Next::Kill));
        o.wait_killed().await;
    }

    #[tokio::test]
    async fn writer_wakes_on_push() {
        let o = std::sync::Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.next().await });
        tokio::task::yield_now().await;
        o.push(f("x"));
        assert!(matches!(t.await.expect("join"), Next::Frames(v) if v.len() == 1));
    }
}
