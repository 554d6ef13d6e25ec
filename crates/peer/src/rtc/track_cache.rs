//! Per-remote-peer cache of track metadata (spec §2.3): keyed by the sender's track id, 512
//! entries, FIFO eviction on new keys, kept across connection swaps, cleared on close.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use super::signal::TrackMeta;

/// Entries kept per remote peer.
pub const TRACK_META_CAPACITY: usize = 512;

/// The cache.
#[derive(Debug, Default)]
pub struct TrackMetaCache {
    entries: HashMap<String, TrackMeta>,
    order: VecDeque<String>,
}

impl TrackMetaCache {
    /// Apply a set (metadata present) or clear (absent) message.
    pub fn apply(&mut self, meta: TrackMeta) {
        if meta.metadata.is_none() {
            if self.entries.remove(&meta.track_id).is_some() {
                self.order.retain(|k| *k != meta.track_id);
            }
            return;
        }
        if !self.entries.contains_key(&meta.track_id) {
            if self.entries.len() >= TRACK_META_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.entries.remove(&old);
            }
            self.order.push_back(meta.track_id.clone());
        }
        self.entries.insert(meta.track_id.clone(), meta);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forget everything (the remote peer closed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Metadata for an arriving track (spec §2.3 lookup order): the track id the msid for its
    /// `mid` names; then `track.id`; then a unique entry with the same `stream_id` and `kind`,
    /// excluding ids the description names explicitly. Ambiguous → `None`.
    pub fn lookup(
        &self,
        msid_track_id: Option<&str>,
        track_id: &str,
        stream_id: Option<&str>,
        kind: &str,
        explicit_ids: &HashSet<String>,
    ) -> Option<&Map<String, Value>> {
        if let Some(m) = msid_track_id.and_then(|id| self.entries.get(id)) {
            return m.metadata.as_ref();
        }
        if let Some(m) = self.entries.get(track_id) {
            return m.metadata.as_ref();
        }
        let stream_id = stream_id?;
        let mut candidates = self.entries.values().filter(|m| {
            m.stream_id.as_deref() == Some(stream_id)
                && m.kind.as_deref() == Some(kind)
                && !explicit_ids.contains(&m.track_id)
        });
        let first = candidates.next()?;
        if candidates.next().is_some() {
            return None;
        }
        first.metadata.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(id: &str, stream: Option<&str>, kind: &str) -> TrackMeta {
        TrackMeta {
            track_id: id.into(),
            metadata: json!({"id": id}).as_object().cloned(),
            kind: Some(kind.into()),
            stream_id: stream.map(str::to_owned),
        }
    }

    #[test]
    fn fifo_eviction_and_clear() {
        let mut c = TrackMetaCache::default();
        for i in 0..600 {
            c.apply(set(&format!("t{i}"), None, "audio"));
        }
        assert_eq!(c.len(), TRACK_META_CAPACITY);
        let none = HashSet::new();
        assert!(c.lookup(None, "t0", None, "audio", &none).is_none());
        assert!(c.lookup(None, "t599", None, "audio", &none).is_some());
        c.apply(TrackMeta {
            metadata: None,
            ..set("t599", None, "audio")
        });
        assert!(c.lookup(None, "t599", None, "audio", &none).is_none());
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn lookup_order() {
        let mut c = TrackMetaCache::default();
        c.apply(set("sender-a", Some("s1"), "audio"));
        c.apply(set("sender-v", Some("s1"), "video"));
        let none = HashSet::new();
        let id =
            |m: Option<&Map<String, Value>>| m.and_then(|m| m["id"].as_str()).map(str::to_owned);
        // 1. msid names the sender's id.
        assert_eq!(
            id(c.lookup(Some("sender-a"), "local-x", None, "audio", &none)),
            Some("sender-a".into())
        );
        // 2. track.id.
        assert_eq!(
            id(c.lookup(None, "sender-v", None, "video", &none)),
            Some("sender-v".into())
        );
        // 3. unique (stream, kind) — Firefox-style receivers with fresh track ids.
        assert_eq!(
            id(c.lookup(None, "fresh", Some("s1"), "audio", &none)),
            Some("sender-a".into())
        );
        let explicit: HashSet<String> = ["sender-a".to_string()].into();
        assert_eq!(
            c.lookup(None, "fresh", Some("s1"), "audio", &explicit),
            None
        );
        c.apply(set("sender-a2", Some("s1"), "audio"));
        assert_eq!(
            c.lookup(None, "fresh", Some("s1"), "audio", &none),
            None,
            "ambiguous"
        );
    }
}
