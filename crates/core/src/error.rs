use thiserror::Error;

/// Errors from parsing user-supplied identifiers, URLs and digests.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error(
        "invalid digest {0:?}: expected sha256:<64 hex>, sha512:<128 hex> or crc32:<10 digits>"
    )]
    InvalidDigest(String),

    #[error("not an OCI blob URL with a sha256/sha512/crc32 digest: {0:?}")]
    NotBlobUrl(String),

    #[error("piece length {0} is below the minimum of {min} bytes", min = crate::MIN_PIECE_LENGTH)]
    PieceLengthTooSmall(u64),

    #[error("invalid relay path: {0}")]
    InvalidRelayPath(String),

    #[error("piece length {0} is above the maximum of {max} bytes", max = crate::piece::MAX_FIXED_PIECE_LENGTH)]
    PieceLengthTooLarge(u64),
}
