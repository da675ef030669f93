//! A client's `Range` header against a blob of some length (first 8 bytes, big-endian).
//! An accepted range must be a non-empty slice of the blob.
#![no_main]
use damselfly_daemon::proxy::range::{parse_range, ByteRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((total, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    // Small lengths matter most (0, 1, a few bytes); big ones still reach u64::MAX.
    let total = u64::from_be_bytes(*total);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Ok(range) = parse_range(header) else {
        return;
    };
    if let ByteRange::From {
        first,
        last: Some(last),
    } = range
    {
        assert!(first <= last, "{header:?} parsed to {range:?}");
    }
    if let Ok((start, end)) = range.resolve(total) {
        assert!(
            start < end,
            "{header:?} on {total} bytes: empty range {start}..{end}"
        );
        assert!(
            end <= total,
            "{header:?} on {total} bytes: {start}..{end} past the end"
        );
        if let ByteRange::Suffix(n) = range {
            assert_eq!(end - start, n.min(total));
        }
    }
});
