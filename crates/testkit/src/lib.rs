//! Test support for the workspace's integration tests, used only as a dev-dependency.
//!
//! - [`Origin`]: an HTTP(S) origin on loopback that serves files with HEAD and Range, counts
//!   the body bytes it hands out, logs every request and misbehaves on demand (ignored Range,
//!   chunked bodies, error statuses, first-N failures, tampering, throttling, delays).
//! - [`TestCa`]: a certificate authority made for one test, issuing leaf certificates for
//!   127.0.0.1 and `localhost`.
//!
//! Panics are fine here: a test support failure should stop the test loudly.

mod body;
mod ca;
mod origin;
mod respond;

pub use ca::{Leaf, TestCa};
pub use origin::{BodyLength, Origin, OriginFile, OriginOptions, OriginRequest, Ranges};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `len` random bytes (a fresh seed every call).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(rand::random()).fill_bytes(&mut data);
    data
}
