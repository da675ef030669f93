//! Piece length and layout, by the Dragonfly client's piece length rule (`dragonflyoss/client`).

use crate::error::CoreError;

/// Smallest automatic piece; also the size at or below which a download skips P2P and goes
/// straight to the origin, since a single piece gains nothing from a swarm.
pub const MIN_PIECE_LENGTH: u64 = 4 * 1024 * 1024;

/// Largest automatic piece: bounds the memory and retry cost of one piece.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;

/// The automatic rule aims at this many pieces per task.
const TARGET_PIECE_COUNT: f64 = 500.0;

/// The automatic piece length: next power of two of `content_length / 500`, clamped.
pub fn auto_piece_length(content_length: u64) -> u64 {
    let quotient = (content_length as f64 / TARGET_PIECE_COUNT) as u64;
    let p = quotient.checked_next_power_of_two().unwrap_or(u64::MAX);
    if p > MIN_PIECE_LENGTH && p < MAX_PIECE_LENGTH {
        p
    } else if p >= MAX_PIECE_LENGTH {
        MAX_PIECE_LENGTH
    } else {
        MIN_PIECE_LENGTH
    }
}

/// Largest piece length a download may fix. Pieces stream to disk, so this bounds how long
/// one piece ties up a connection, not memory; the lower bound is what stops a request from
/// cutting a large file into billions of piece records.
pub const MAX_FIXED_PIECE_LENGTH: u64 = 1024 * 1024 * 1024;

/// Validates a user-fixed piece length, wherever a request carries one (dfget, the proxy,
/// DownloadTask from the local socket or a scheduler).
pub fn check_fixed_piece_length(piece_length: u64) -> Result<u64, CoreError> {
    if piece_length < MIN_PIECE_LENGTH {
        return Err(CoreError::PieceLengthTooSmall(piece_length));
    }
    if piece_length > MAX_FIXED_PIECE_LENGTH {
        return Err(CoreError::PieceLengthTooLarge(piece_length));
    }
    Ok(piece_length)
}

/// `{task_id}-{number}`.
pub fn piece_id(task_id: &str, number: u32) -> String {
    format!("{task_id}-{number}")
}

/// One piece's place in the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceSpan {
    pub number: u32,
    pub offset: u64,
    pub length: u64,
}

impl PieceSpan {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// How a task's content is cut into pieces: all pieces `piece_length` long but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceLayout {
    pub content_length: u64,
    pub piece_length: u64,
}

impl PieceLayout {
    /// A layout with the user's fixed piece length, or the automatic one.
    pub fn new(content_length: u64, fixed_piece_length: Option<u64>) -> Self {
        let piece_length = fixed_piece_length
            .filter(|&l| l > 0)
            .unwrap_or_else(|| auto_piece_length(content_length));
        Self {
            content_length,
            piece_length,
        }
    }

    pub fn piece_count(&self) -> u32 {
        if self.content_length == 0 {
            return 0;
        }
        self.content_length.div_ceil(self.piece_length) as u32
    }

    /// The span of piece `number`, or `None` past the end.
    pub fn span(&self, number: u32) -> Option<PieceSpan> {
        let offset = u64::from(number).checked_mul(self.piece_length)?;
        if offset >= self.content_length {
            return None;
        }
        let length = self.piece_length.min(self.content_length - offset);
        Some(PieceSpan {
            number,
            offset,
            length,
        })
    }

    pub fn spans(&self) -> impl Iterator<Item = PieceSpan> + '_ {
        (0..self.piece_count()).filter_map(|n| self.span(n))
    }

    /// The pieces a byte range needs: `offset < start + length` and `offset + L > start`.
    pub fn spans_for_range(&self, start: u64, length: u64) -> impl Iterator<Item = PieceSpan> + '_ {
        let end = start.saturating_add(length);
        self.spans()
            .filter(move |s| s.offset < end && s.offset + self.piece_length > start)
    }

    /// Content this small goes straight to the origin.
    pub fn is_small(&self) -> bool {
        self.content_length <= MIN_PIECE_LENGTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_length_table() {
        let rows: [(u64, u64, u32); 11] = [
            (0, 4194304, 0),
            (1, 4194304, 1),
            (2097152499, 4194304, 501),
            (2097152500, 8388608, 251),
            (4194304499, 8388608, 501),
            (4194304500, 16777216, 251),
            (8388608500, 33554432, 251),
            (16777216499, 33554432, 501),
            (16777216500, 67108864, 251),
            (10737418240, 33554432, 320),
            (1099511627776, 67108864, 16384),
        ];
        for (len, piece, count) in rows {
            let layout = PieceLayout::new(len, None);
            assert_eq!(layout.piece_length, piece, "{len}");
            assert_eq!(layout.piece_count(), count, "{len}");
        }
        assert_eq!(
            PieceLayout::new(10737418240, Some(1048576)).piece_length,
            1048576
        );
    }

    #[test]
    fn upstream_piece_vectors() {
        // (piece_length, content_length, range, numbers, last offset, last length)
        type Row = (u64, u64, Option<(u64, u64)>, &'static [u32], u64, u64);
        let rows: [Row; 6] = [
            (1000, 1, None, &[0], 0, 1),
            (1000, 5000, None, &[0, 1, 2, 3, 4], 4000, 1000),
            (5000, 1000, None, &[0], 0, 1000),
            (10, 101, None, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 100, 1),
            (1000, 5000, Some((1500, 2000)), &[1, 2, 3], 3000, 1000),
            (1000, 5000, Some((0, 1)), &[0], 0, 1000),
        ];
        for (pl, cl, range, numbers, last_off, last_len) in rows {
            let layout = PieceLayout::new(cl, Some(pl));
            let spans: Vec<PieceSpan> = match range {
                Some((s, l)) => layout.spans_for_range(s, l).collect(),
                None => layout.spans().collect(),
            };
            let got: Vec<u32> = spans.iter().map(|s| s.number).collect();
            assert_eq!(got, numbers);
            let last = spans.last().unwrap();
            assert_eq!((last.offset, last.length), (last_off, last_len));
        }
    }

    #[test]
    fn piece_ids_and_bounds() {
        assert_eq!(
            piece_id(
                "36223cc7a9dcd1e6156e65921abaa135deed989244b09e1af46e284b3e6ad1c2",
                7
            ),
            "36223cc7a9dcd1e6156e65921abaa135deed989244b09e1af46e284b3e6ad1c2-7"
        );
        let layout = PieceLayout::new(10, Some(4));
        assert_eq!(layout.span(3), None);
        assert_eq!(layout.span(u32::MAX), None);
        assert!(check_fixed_piece_length(1024).is_err());
        assert!(check_fixed_piece_length(1).is_err());
        assert!(check_fixed_piece_length(MAX_FIXED_PIECE_LENGTH + 1).is_err());
        assert_eq!(
            check_fixed_piece_length(MAX_FIXED_PIECE_LENGTH),
            Ok(MAX_FIXED_PIECE_LENGTH)
        );
        assert!(layout.is_small());
    }
}
