//! One `Range: bytes=...` request header (RFC 9110 §14.1.2), resolved against a length.

/// A single byte range as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// The range cannot be satisfied for this length (answered 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeError;

/// Another unit, bad syntax or too many ranges (left to the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// Ranges one request may ask for: each is a download and a part of the answer, and a
/// client asking for more is better served by the origin (RFC 9110 §14.2 lets a server
/// refuse many small ranges).
pub const MAX_RANGES: usize = 32;

/// `bytes=a-b, c-d, ...`: one or more ranges, in the client's order.
pub fn parse_ranges(value: &str) -> Result<Vec<ByteRange>, Unsupported> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(Unsupported)?;
    let ranges = spec
        .split(',')
        .map(|part| parse_range(&format!("bytes={}", part.trim())))
        .collect::<Result<Vec<_>, _>>()?;
    if ranges.len() > MAX_RANGES {
        return Err(Unsupported);
    }
    Ok(ranges)
}

pub fn parse_range(value: &str) -> Result<ByteRange, Unsupported> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")
        .ok_or(Unsupported)?
        .trim();
    if spec.contains(',') {
        return Err(Unsupported);
    }
    let (first, last) = spec.split_once('-').ok_or(Unsupported)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| Unsupported);
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Ok(ByteRange::Suffix(number(last)?)),
        (false, true) => Ok(ByteRange::From {
            first: number(first)?,
            last: None,
        }),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            if last < first {
                return Err(Unsupported);
            }
            Ok(ByteRange::From {
                first,
                last: Some(last),
            })
        }
        (true, true) => Err(Unsupported),
    }
}

impl ByteRange {
    /// `[start, end)` within `total`.
    pub fn resolve(self, total: u64) -> Result<(u64, u64), RangeError> {
        match self {
            ByteRange::From { first, last } => {
                if first >= total {
                    return Err(RangeError);
                }
                let end = last.map_or(total, |l| l.saturating_add(1).min(total));
                Ok((first, end))
            }
            // RFC 9110 §14.1.1: a suffix of an empty representation is unsatisfiable; without
            // this, `bytes=-5` on an empty blob was answered 206 `bytes 0-0/0`, a byte that
            // does not exist (found by the proxy_range fuzz target's property).
            ByteRange::Suffix(0) => Err(RangeError),
            ByteRange::Suffix(_) if total == 0 => Err(RangeError),
            ByteRange::Suffix(n) => Ok((total.saturating_sub(n), total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let r = |s| parse_range(s).unwrap().resolve(100);
        assert_eq!(r("bytes=0-9"), Ok((0, 10)));
        assert_eq!(r("bytes=90-"), Ok((90, 100)));
        assert_eq!(r("bytes=90-500"), Ok((90, 100)));
        assert_eq!(r("bytes=-10"), Ok((90, 100)));
        assert_eq!(r("bytes=-1000"), Ok((0, 100)));
        assert_eq!(r("bytes=100-"), Err(RangeError));
        assert_eq!(r("bytes=-0"), Err(RangeError));
        let empty = |s| parse_range(s).unwrap().resolve(0);
        assert_eq!(
            empty("bytes=-5"),
            Err(RangeError),
            "no byte of an empty blob"
        );
        assert_eq!(empty("bytes=0-"), Err(RangeError));
        assert_eq!(
            parse_ranges("bytes=0-1, 5-6,-3"),
            Ok(vec![
                ByteRange::From {
                    first: 0,
                    last: Some(1)
                },
                ByteRange::From {
                    first: 5,
                    last: Some(6)
                },
                ByteRange::Suffix(3),
            ])
        );
        assert_eq!(parse_ranges("bytes=0-1,,5-6"), Err(Unsupported));
        let many = format!("bytes={}", vec!["0-1"; MAX_RANGES + 1].join(","));
        assert_eq!(parse_ranges(&many), Err(Unsupported));
        for bad in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "",
        ] {
            assert_eq!(parse_range(bad), Err(Unsupported), "{bad}");
        }
    }
}
