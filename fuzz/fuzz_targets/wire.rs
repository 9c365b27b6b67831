//! Decoders of both directions of the fast protocol: never panic; a command re-encodes to the
//! same bytes, a response to bytes that decode to the same response (INFO from an older device
//! lacks the features byte, and a newer device may append fields: both decode).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ota_core::protocol::fast::{Command, Response, decode_chunk};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; Response::MAX_LEN];
    if let Ok(c) = Command::decode(data) {
        let n = c.encode(&mut buf).expect("a decoded command fits");
        assert_eq!(&buf[..n], data);
    }
    if let Ok(r) = Response::decode(data) {
        let n = r.encode(&mut buf).expect("a decoded response fits");
        assert_eq!(Response::decode(&buf[..n]), Ok(r));
    }
    let _ = decode_chunk(data);
});
