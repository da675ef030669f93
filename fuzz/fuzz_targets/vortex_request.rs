//! A peer's first bytes on the Vortex piece port, as the server reads them. A request that
//! decodes must re-encode to the same tag, length and value (the packet ID is random).
#![no_main]
use damselfly_transfer::decode_request_frame;
use libfuzzer_sys::fuzz_target;
use vortex_protocol::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_request_frame(data) else {
        return;
    };
    let mut again = Vec::new();
    request.encode_packet(&mut again);
    assert!(again.len() <= data.len(), "decoded more than was sent");
    assert_eq!(&again[1..], &data[1..again.len()], "re-encoding differs");
});
