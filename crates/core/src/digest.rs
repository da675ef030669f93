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

/// Prefix of a trusted piece digest. sha256 rather than BLAKE3: `sha2` is already here for
/// whole-file digests (OCI blobs are named by sha256), Dragonfly's digest parser knows it, and
/// with SHA-NI it hashes faster than the disks and links that feed it.
pub const TRUSTED_PIECE_DIGEST_PREFIX: &str = "sha256:";

/// The trusted digest of a piece: `sha256:<64 lowercase hex>`. Unlike `crc32:` it cannot be
/// matched by bytes chosen to fit it.
pub fn trusted_piece_digest(data: &[u8]) -> String {
    format!(
        "{TRUSTED_PIECE_DIGEST_PREFIX}{}",
        hex::encode(Sha256::digest(data))
    )
}

/// Whether `digest` is a well-formed trusted piece digest (what a scheduler relays; a crc32
/// is never taken for one).
pub fn is_trusted_piece_digest(digest: &str) -> bool {
    digest
        .parse::<Digest>()
        .is_ok_and(|d| d.algorithm == DigestAlgorithm::Sha256)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
    Crc32,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
            Self::Crc32 => "crc32",
        }
    }

    /// Length of the encoded value that upstream's parser demands.
    fn encoded_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
            Self::Crc32 => 10,
        }
    }
}

/// A whole-file digest as given to `dfget --digest`: `sha256:…`, `sha512:…` or `crc32:…`.
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
}

impl DigestHasher {
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(Sha512::new()),
            DigestAlgorithm::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
            Self::Crc32(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Digest {
        let (algorithm, encoded) = match self {
            Self::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
            Self::Crc32(h) => (DigestAlgorithm::Crc32, h.finalize().to_string()),
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
        let digest = trusted_piece_digest(b"test content");
        assert_eq!(
            digest,
            "sha256:6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
        );
        assert!(is_trusted_piece_digest(&digest));
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
