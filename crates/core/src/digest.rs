//! Piece digests (`crc32:<decimal>`) and whole-file digests, as the Dragonfly client
//! (`dragonflyoss/client`) computes them.

use crate::error::CoreError;
use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::str::FromStr;

/// `crc32:<decimal>` of a piece, CRC-32/IEEE, no zero padding.
pub fn piece_digest(data: &[u8]) -> String {
    format_crc32(crc32fast::hash(data))
}

pub fn format_crc32(crc: u32) -> String {
    format!("crc32:{crc}")
}

/// The algorithm of the trusted piece digests this peer computes: BLAKE3. Every byte a child
/// takes from a parent is hashed with it, so its cost per byte is the child's largest CPU
/// cost after the copies (sha256 with SHA-NI took about a third of a child's CPU on loopback;
/// BLAKE3 hashes several times faster with the same strength against forged bytes).
pub const TRUSTED_PIECE_DIGEST_ALGORITHM: DigestAlgorithm = DigestAlgorithm::Blake3;

/// The trusted digest of a piece: `blake3:<64 lowercase hex>`. Unlike `crc32:` it cannot be
/// matched by bytes chosen to fit it.
pub fn trusted_piece_digest(data: &[u8]) -> String {
    let mut hasher = DigestHasher::new(TRUSTED_PIECE_DIGEST_ALGORITHM);
    hasher.update(data);
    hasher.finalize().to_string()
}

/// Whether `digest` is a well-formed trusted piece digest (what a scheduler relays; a crc32
/// is never taken for one). `sha256:` is still taken: earlier Damselfly peers report it.
/// Peers that know only `sha256:` drop `blake3:` digests as malformed and check the parent's
/// crc32 instead, so a cluster mid-upgrade keeps working.
pub fn is_trusted_piece_digest(digest: &str) -> bool {
    digest
        .parse::<Digest>()
        .is_ok_and(|d| d.algorithm.is_trusted_for_pieces())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
    Crc32,
    Blake3,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
            Self::Crc32 => "crc32",
            Self::Blake3 => "blake3",
        }
    }

    /// Whether a piece digest of this algorithm holds a parent to the bytes (crc32 does not).
    pub fn is_trusted_for_pieces(self) -> bool {
        matches!(self, Self::Sha256 | Self::Blake3)
    }

    /// Length of the encoded value that upstream's parser demands.
    fn encoded_len(self) -> usize {
        match self {
            Self::Sha256 | Self::Blake3 => 64,
            Self::Sha512 => 128,
            Self::Crc32 => 10,
        }
    }
}

/// A whole-file digest as given to `dfget --digest`: `sha256:…`, `sha512:…` or `crc32:…`
/// (Dragonfly's), or `blake3:…` (trusted piece digests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: DigestAlgorithm,
    pub encoded: String,
}

impl FromStr for Digest {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CoreError::InvalidDigest(s.to_string());
        let (alg, encoded) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            "crc32" => DigestAlgorithm::Crc32,
            "blake3" => DigestAlgorithm::Blake3,
            _ => return Err(invalid()),
        };
        let well_formed = encoded.len() == algorithm.encoded_len()
            && match algorithm {
                DigestAlgorithm::Crc32 => encoded.bytes().all(|b| b.is_ascii_digit()),
                _ => encoded.bytes().all(|b| b.is_ascii_hexdigit()),
            };
        if !well_formed {
            return Err(invalid());
        }
        Ok(Self {
            algorithm,
            encoded: encoded.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.encoded)
    }
}

/// Incremental whole-file hashing, so a file is digested while it streams.
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
    Crc32(crc32fast::Hasher),
    /// Boxed: the hasher keeps its chunk stack inline (about 2 KiB).
    Blake3(Box<blake3::Hasher>),
}

impl DigestHasher {
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(Sha512::new()),
            DigestAlgorithm::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
            DigestAlgorithm::Blake3 => Self::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
            Self::Crc32(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finalize(self) -> Digest {
        let (algorithm, encoded) = match self {
            Self::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
            Self::Crc32(h) => (DigestAlgorithm::Crc32, h.finalize().to_string()),
            Self::Blake3(h) => (DigestAlgorithm::Blake3, h.finalize().to_hex().to_string()),
        };
        Digest { algorithm, encoded }
    }
}

/// Digest of a whole file on disk, read in chunks.
pub fn digest_file(path: &std::path::Path, algorithm: DigestAlgorithm) -> std::io::Result<Digest> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = DigestHasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(alg: DigestAlgorithm, data: &[u8]) -> String {
        let mut h = DigestHasher::new(alg);
        h.update(data);
        h.finalize().encoded
    }

    #[test]
    fn upstream_digest_vectors() {
        let data = b"test content";
        assert_eq!(
            hash(DigestAlgorithm::Sha256, data),
            "6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
        );
        assert_eq!(hash(DigestAlgorithm::Sha512, data), "0cbf4caef38047bba9a24e621a961484e5d2a92176a859e7eb27df343dd34eb98d538a6c5f4da1ce302ec250b821cc001e46cc97a704988297185a4df7e99602");
        assert_eq!(hash(DigestAlgorithm::Crc32, data), "1475635037");
        assert_eq!(piece_digest(data), "crc32:1475635037");
    }

    #[test]
    fn trusted_piece_digests() {
        // BLAKE3's published vector for the empty input.
        assert_eq!(
            trusted_piece_digest(b""),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let digest = trusted_piece_digest(b"test content");
        assert!(digest.starts_with("blake3:") && digest.len() == 7 + 64);
        assert!(is_trusted_piece_digest(&digest));
        assert!(is_trusted_piece_digest(
            "sha256:6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
        ));
        assert!(!is_trusted_piece_digest("blake3:abc"));
        assert!(!is_trusted_piece_digest("crc32:1475635037"));
        assert!(!is_trusted_piece_digest("sha256:abc"));
    }

    #[test]
    fn piece_digest_vectors() {
        assert_eq!(piece_digest(b""), "crc32:0");
        assert_eq!(piece_digest(b"hello world"), "crc32:222957957");
        assert_eq!(piece_digest(&vec![0u8; 4 * 1024 * 1024]), "crc32:289882218");
    }

    #[test]
    fn digest_parsing() {
        let d: Digest = "sha256:6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(
            d.to_string(),
            "sha256:6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
        );
        assert!("crc32:1475635037".parse::<Digest>().is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "crc32:12",
            "sha256:zz",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
