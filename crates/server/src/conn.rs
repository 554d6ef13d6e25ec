//! The IO driver of one WebSocket connection: auth, then a reader and a writer future in one
//! task. All protocol decisions are made by [`crate::hub::Hub`]; this file only moves bytes,
//! keeps time (rate bucket, pings, liveness, token expiry) and cleans up.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep_until, timeout};

use parlor_protocol::{ClientRequest, CloseCode, parse_client_frame};

use crate::App;
use crate::hub::ConnId;
use crate::outbox::Next;

/// Per-connection token bucket (spec §1.14): `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            last: now,
        }
    }

    /// Take one token; false when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Send a close frame to a socket that never got a welcome (auth or admission failure).
async fn refuse(mut socket: WebSocket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code: code.0,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        // Give the client a moment to read the close frame and answer it.
        let _ = timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

/// Removes the connection from the hub however the task ends (return, error or panic).
struct Registration<'a> {
    app: &'a App,
    conn: ConnId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.app.hub().disconnect(self.conn, crate::unix_ms());
    }
}

/// The close frame RFC 6455 asks for when a client breaks the WebSocket protocol (§7.4.1):
/// 1009 for a frame over the cap, 1007 for a text frame that is not UTF-8, 1002 for the rest
/// (unmasked frames, reserved bits, unknown opcodes, oversized or fragmented control frames).
/// `None` for transport errors, where no frame can be sent.
fn protocol_close(e: axum::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::Error;
    match e.into_inner().downcast_ref::<Error>()? {
        Error::Capacity(_) => Some((CloseCode::MESSAGE_TOO_BIG, "frame too large")),
        Error::Utf8(_) => Some((CloseCode::INVALID_PAYLOAD, "text frame is not UTF-8")),
        Error::Protocol(_) => Some((CloseCode::PROTOCOL_ERROR, "WebSocket protocol error")),
        _ => None,
    }
}

/// Drive one upgraded connection from `client` to its end.
pub(crate) async fn run(
    app: Arc<App>,
    client: std::net::IpAddr,
    query: Option<String>,
    socket: WebSocket,
) {
    let now_ms = crate::unix_ms();
    let grant = match app.auth.authenticate(query.as_deref(), now_ms / 1000) {
        Ok(g) => g,
        Err(e) => {
            tracing::info!(%client, code = e.code.0, reason = e.reason, "credential refused");
            app.metrics.close(e.code);
            return refuse(socket, e.code, e.reason).await;
        }
    };
    let expires_at = grant.expires_at;
    let connected = app.hub().connect(grant, now_ms);
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%client, code = e.code.0, reason = e.reason, "connection refused");
            app.metrics.close(e.code);
            return refuse(socket, e.code, e.reason).await;
        }
    };
    let conn = connected.conn;
    let outbox = connected.outbox;
    let _registration = Registration { app: &app, conn };
    tracing::debug!(peer = %connected.peer_id, "connected");

    let limits = &app.config.limits;
    let started = Instant::now();
    // 0 until the first inbound frame; then its time since `started`, plus one.
    let last_inbound_ms = AtomicU64::new(0);
    let ping_every = Duration::from_secs(limits.ping_interval_secs);
    let dead_after = ping_every * 2;
    let first_frame_within = Duration::from_millis(limits.first_frame_timeout_ms);
    let frame_cap = limits.max_message_size + crate::ENVELOPE_ALLOWANCE;
    let (mut sink, mut stream) = socket.split();

    let reader = async {
        let mut bucket = TokenBucket::new(limits.rate_per_sec, limits.rate_burst, Instant::now());
        // Pings have their own bucket (they never cost a message token, spec §1.13), so a
        // ping flood is refused without touching a client's heartbeats.
        let mut pings =
            TokenBucket::new(limits.ping_rate_per_sec, limits.ping_burst, Instant::now());
        let ping_flood = |pings: &mut TokenBucket| {
            let over = !pings.take(Instant::now());
            if over {
                app.hub()
                    .close(conn, CloseCode::OVER_MESSAGE_RATE, "ping rate exceeded");
            }
            over
        };
        while let Some(msg) = stream.next().await {
            last_inbound_ms.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    let Some((code, reason)) = protocol_close(e) else {
                        return false;
                    };
                    tracing::debug!(%client, code = code.0, reason, "closing on a protocol error");
                    app.hub().close(conn, code, reason);
                    return true;
                }
            };
            match msg {
                Message::Text(text) => {
                    app.metrics.frames_in.inc();
                    if outbox.is_closing() {
                        continue; // closing: read until the client answers our close
                    }
                    if text.len() > frame_cap {
                        app.hub()
                            .close(conn, CloseCode::MESSAGE_TOO_BIG, "frame too large");
                        continue;
                    }
                    let parsed = parse_client_frame(&text);
                    let is_ping = matches!(&parsed, Ok(f) if f.request == ClientRequest::Ping);
                    if is_ping && ping_flood(&mut pings) {
                        continue;
                    }
                    if !is_ping && !bucket.take(Instant::now()) {
                        app.hub().close(
                            conn,
                            CloseCode::OVER_MESSAGE_RATE,
                            "message rate exceeded",
                        );
                        continue;
                    }
                    let mut hub = app.hub();
                    match parsed {
                        Ok(frame) => hub.handle(conn, frame, crate::unix_ms()),
                        Err(err) => hub.reject(conn, &err),
                    }
                }
                Message::Binary(_) => {
                    app.hub().close(
                        conn,
                        CloseCode::POLICY_VIOLATION,
                        "binary frames are not supported",
                    );
                }
                Message::Ping(_) => {
                    // tungstenite has queued the pong; a flood closes the connection.
                    if !outbox.is_closing() {
                        ping_flood(&mut pings);
                    }
                }
                Message::Pong(_) => {}
                Message::Close(_) => {
                    // tungstenite queued the close reply; have the writer flush it.
                    outbox.close(CloseCode::NORMAL, "");
                    return true;
                }
            }
        }
        false
    };

    let writer = async {
        // The first ping goes out at once: any WebSocket client answers it, so a connection
        // that upgraded and then says nothing is gone after `first_frame_timeout_ms`.
        let mut ping = tokio::time::interval(ping_every);
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        let mut expiry = pin!(sleep_until(match expires_at {
            Some(exp) => {
                // Saturating: a far-future `exp` (u64::MAX) must not wrap to "expired".
                let left_ms = exp.saturating_mul(1000).saturating_sub(crate::unix_ms());
                tokio::time::Instant::now() + Duration::from_millis(left_ms).min(far)
            }
            None => tokio::time::Instant::now() + far,
        }));
        let mut liveness = pin!(sleep_until(
            tokio::time::Instant::now() + first_frame_within.min(dead_after)
        ));
        loop {
            tokio::select! {
                next = outbox.next() => match next {
                    Next::Frames(frames) => {
                        for f in frames {
                            if sink.feed(Message::Text(f)).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                    Next::Close(code, reason) => {
                        tracing::debug!(code = code.0, reason, "closing connection");
                        let frame = CloseFrame { code: code.0, reason: reason.into() };
                        // After the client's own close, tungstenite refuses a second close
                        // frame but still holds its automatic reply: flush pushes it out.
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        let _ = sink.flush().await;
                        return;
                    }
                    Next::Kill => return,
                },
                _ = ping.tick() => {
                    // Closing (the client's close read, our reply queued in tungstenite): no
                    // ping, which tungstenite would refuse, and the writer would return without
                    // flushing the reply (the client saw a reset without a closing handshake).
                    if outbox.is_closing() {
                        continue;
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        let _ = sink.flush().await;
                        return;
                    }
                }
                _ = &mut liveness => {
                    // Before the first frame the shorter of the two limits applies.
                    let (silent, limit) = match last_inbound_ms.load(Ordering::Relaxed) {
                        0 => (started.elapsed(), first_frame_within.min(dead_after)),
                        ms => (
                            started.elapsed().saturating_sub(Duration::from_millis(ms - 1)),
                            dead_after,
                        ),
                    };
                    if silent >= limit {
                        if last_inbound_ms.load(Ordering::Relaxed) == 0 {
                            tracing::info!(%client, "no frame after the upgrade: dropping");
                            app.metrics.phase_timeouts.inc();
                        } else {
                            tracing::info!(%client, silent_ms = silent.as_millis() as u64, "dropping dead connection");
                        }
                        app.metrics.close(CloseCode(0));
                        outbox.kill();
                        return;
                    }
                    liveness.as_mut().reset(tokio::time::Instant::now() + (limit - silent));
                }
                _ = &mut expiry => {
                    app.hub().close(conn, CloseCode::TOKEN_EXPIRED, "token expired");
                    expiry.as_mut().reset(tokio::time::Instant::now() + far);
                }
            }
        }
    };

    let mut reader = pin!(reader);
    let mut writer = pin!(writer);
    tokio::select! {
        closing = &mut reader => {
            if closing {
                // Let the writer flush what is queued and send the close frame.
                let _ = timeout(Duration::from_secs(2), &mut writer).await;
            }
        }
        _ = &mut writer => {
            // Our close frame is out; wait briefly for the client's answer.
            let _ = timeout(Duration::from_secs(1), &mut reader).await;
        }
        _ = outbox.wait_killed() => {
            tracing::info!(peer = %connected.peer_id, "connection killed (slow consumer or dead)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }
}
