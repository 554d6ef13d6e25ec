//! The server's frame parser and validation (spec §1.10) on any text, and channel globs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_protocol::{parse_client_frame, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(text) {
        Ok(frame) => {
            // A request id is only ever echoed when it is valid.
            if let Some(rid) = &frame.request_id {
                assert!(validate::is_valid_request_id(rid), "{rid:?}");
            }
        }
        Err(e) => {
            if let Some(rid) = &e.request_id {
                assert!(validate::is_valid_request_id(rid), "{rid:?}");
            }
        }
    }
    // Channel globs from a key or token against a channel: linear, never a panic.
    if let Some((pattern, channel)) = text.split_once('\n') {
        let _ = validate::glob_match(pattern, channel);
        let _ = validate::is_valid_channel(channel);
        let _ = validate::is_reserved_channel(channel);
    }
});
