//! The peer's parser of server frames (the real clients' strictness, spec §1.6).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_protocol::client::parse_server_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_server_frame(text);
    }
});
