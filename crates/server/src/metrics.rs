//! Prometheus metrics (`GET /metrics`), in the text exposition format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use parlor_protocol::{CloseCode, ErrorCode};

type CodeLabel = [(&'static str, String); 1];

/// The server's counters and gauges. Cheap to update from any task (atomics).
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections that received a welcome.
    pub connections: Gauge,
    /// Channels with at least one subscriber.
    pub channels: Gauge,
    /// Text frames received from clients.
    pub frames_in: Counter,
    /// Frames queued to clients.
    pub frames_out: Counter,
    /// Other cluster nodes this node is in sync with (0 outside cluster mode).
    pub cluster_nodes: Gauge,
    /// TCP connections accepted that have not yet upgraded to a WebSocket.
    pub pending: Gauge,
    /// TCP connections closed at accept: over the pending cap (total or per address).
    pub pending_refused: Counter,
    /// Connections closed for a phase timeout (TLS handshake, headers, idle HTTP, first frame).
    pub phase_timeouts: Counter,
    errors: Family<CodeLabel, Counter>,
    closes: Family<CodeLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("parlor");
        let connections = Gauge::default();
        let channels = Gauge::default();
        let frames_in = Counter::default();
        let frames_out = Counter::default();
        let cluster_nodes = Gauge::default();
        let pending = Gauge::default();
        let pending_refused = Counter::default();
        let phase_timeouts = Counter::default();
        registry.register(
            "pending_connections",
            "TCP connections accepted that have not yet upgraded to a WebSocket",
            pending.clone(),
        );
        registry.register(
            "pending_refused",
            "TCP connections closed at accept for the pending cap",
            pending_refused.clone(),
        );
        registry.register(
            "phase_timeouts",
            "Connections closed for a TLS, header, idle or first-frame timeout",
            phase_timeouts.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        let closes = Family::<CodeLabel, Counter>::default();
        registry.register(
            "connections",
            "Open connections that received a welcome",
            connections.clone(),
        );
        registry.register(
            "channels",
            "Channels with at least one subscriber",
            channels.clone(),
        );
        registry.register(
            "frames_in",
            "Text frames received from clients",
            frames_in.clone(),
        );
        registry.register("frames_out", "Frames queued to clients", frames_out.clone());
        registry.register(
            "cluster_nodes",
            "Other cluster nodes this node is in sync with",
            cluster_nodes.clone(),
        );
        registry.register(
            "errors",
            "Error frames sent, by protocol error code",
            errors.clone(),
        );
        registry.register(
            "closes",
            "Connections closed by the server, by close code",
            closes.clone(),
        );
        Metrics {
            registry,
            connections,
            channels,
            frames_in,
            frames_out,
            cluster_nodes,
            pending,
            pending_refused,
            phase_timeouts,
            errors,
            closes,
        }
    }

    /// Count an error frame.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&[("code", code.as_str().to_owned())])
            .inc();
    }

    /// Count a server-initiated close (`0` = dropped without a close frame).
    pub fn close(&self, code: CloseCode) {
        self.closes
            .get_or_create(&[("code", code.0.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_code() {
        let m = Metrics::new();
        m.connections.inc();
        m.error(ErrorCode::PeerNotFound);
        m.close(CloseCode::OVER_MESSAGE_RATE);
        let text = m.render();
        assert!(text.contains("parlor_connections 1"), "{text}");
        assert!(
            text.contains(r#"parlor_errors_total{code="peer_not_found"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"parlor_closes_total{code="4011"} 1"#),
            "{text}"
        );
    }
}
