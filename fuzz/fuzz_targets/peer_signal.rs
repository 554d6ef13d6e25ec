//! What a remote room member can send the Rust peer: a `direct` payload classified as an SDP
//! description, a trickled candidate or track metadata (spec §2.2), then the bounded SDP
//! readers, the track-metadata cache, and str0m's parsers and offer handling on the SDP.
//!
//! The first byte picks the entry: even — the bytes are a JSON `direct` payload; odd — the
//! bytes are SDP text offered straight into a fresh `Rtc` (as `connection` does).
#![no_main]

use std::collections::HashSet;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use parlor_peer::rtc::sdp;
use parlor_peer::rtc::signal::{Inbound, SdpKind, classify};
use parlor_peer::rtc::track_cache::TrackMetaCache;
use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};

fn read_sdp(text: &str) {
    let _ = sdp::ice_ufrag(text);
    let _ = sdp::fingerprint(text);
    let _ = sdp::first_mid(text);
    let mids = sdp::audio_mids(text);
    assert!(mids.len() <= 4096);
    let msids = sdp::msids_by_mid(text);
    assert!(msids.len() <= sdp::MAX_MSID_ENTRIES);
}

fn offer_into_rtc(text: &str) {
    let Ok(offer) = SdpOffer::from_sdp_string(text) else {
        return;
    };
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let _ = rtc.sdp_api().accept_offer(offer);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        if let Ok(text) = std::str::from_utf8(rest) {
            read_sdp(text);
            offer_into_rtc(text);
        }
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    match classify(&value) {
        Inbound::Description { kind, sdp: text } => {
            read_sdp(&text);
            match kind {
                SdpKind::Offer => offer_into_rtc(&text),
                SdpKind::Answer => {
                    let _ = SdpAnswer::from_sdp_string(&text);
                }
            }
        }
        Inbound::Candidate(Some(c)) => {
            let _ = Candidate::from_sdp_string(c.candidate.trim_start_matches("a="));
        }
        Inbound::TrackMeta(meta) => {
            let mut cache = TrackMetaCache::default();
            let id = meta.track_id.clone();
            let stream = meta.stream_id.clone();
            cache.apply(meta);
            let _ = cache.lookup(Some(&id), &id, stream.as_deref(), "audio", &HashSet::new());
        }
        Inbound::Candidate(None) | Inbound::Data | Inbound::Malformed => {}
    }
});
