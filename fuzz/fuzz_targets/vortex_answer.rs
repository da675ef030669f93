//! A parent's answer to a piece request, as the client reads it. The first 20 bytes choose the
//! requested span (number, offset, length, big-endian); the rest is the answer. Accepted
//! metadata must describe exactly the requested span and survive a re-encode.
#![no_main]
use damselfly_core::PieceSpan;
use damselfly_transfer::decode_answer_frame;
use libfuzzer_sys::fuzz_target;
use vortex_protocol::tlv::piece_content::PieceContent;
use vortex_protocol::{Message, HEADER_SIZE};

const TASK_ID: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    let Some((span, frame)) = data.split_first_chunk::<20>() else {
        return;
    };
    let span = PieceSpan {
        number: u32::from_be_bytes(span[0..4].try_into().unwrap()),
        offset: u64::from_be_bytes(span[4..12].try_into().unwrap()),
        length: u64::from_be_bytes(span[12..20].try_into().unwrap()),
    };
    let Ok(metadata) = decode_answer_frame(frame, TASK_ID, span) else {
        return;
    };
    assert_eq!(
        (metadata.number, metadata.offset, metadata.length),
        (span.number, span.offset, span.length)
    );
    let content = PieceContent { metadata };
    let mut again = Vec::new();
    content.encode_packet(&mut again);
    let decoded = decode_answer_frame(&again, TASK_ID, span).expect("re-encoded answer decodes");
    assert_eq!(decoded, content.metadata, "re-decoded metadata differs");
    let declared = u32::from_be_bytes(frame[2..HEADER_SIZE].try_into().unwrap()) as usize;
    if declared == content.encoded_len() {
        // Nothing appended after the known fields: the bytes must come back identical.
        assert_eq!(&again[1..], &frame[1..again.len()], "re-encoding differs");
    }
});
