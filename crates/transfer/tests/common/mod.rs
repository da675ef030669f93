//! Helpers shared by the transfer tests; the origin and the test CA are damselfly-testkit's.
#![allow(dead_code)]

use damselfly_core::PieceLayout;
use damselfly_storage::{Storage, StorageConfig};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[allow(unused_imports)]
pub use damselfly_testkit::{BodyLength, Origin, OriginOptions, Ranges, TestCa};

/// Piece length of the piece-transport tests.
pub const PIECE: u64 = 256 * 1024;

/// The path every transfer test serves its one object at.
pub const BLOB: &str = "blob";

/// An origin on the test's runtime serving `data` at [`BLOB`].
pub async fn start_origin(data: Vec<u8>, options: OriginOptions) -> Origin {
    let origin = Origin::spawn(options).await;
    origin.add(BLOB, data);
    origin
}

/// Like [`start_origin`], over TLS with a certificate signed by `ca`.
pub async fn start_tls_origin(data: Vec<u8>, ca: &TestCa) -> Origin {
    let options = OriginOptions {
        tls: Some(ca.server_config()),
        ..OriginOptions::default()
    };
    start_origin(data, options).await
}

pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub fn task_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn storage(dir: &std::path::Path) -> Storage {
    Storage::open(StorageConfig::with_dir(dir)).unwrap()
}

/// A storage holding every piece of `data` in [`PIECE`]s (not finished, so a test can still
/// tamper with it).
pub async fn seeded(dir: &std::path::Path, id: &str, data: &[u8]) -> (Storage, PieceLayout) {
    let storage = storage(dir);
    let task = storage
        .prepare_task(id, data.len() as u64, PIECE, vec![])
        .await
        .unwrap();
    for span in task.layout().spans() {
        let bytes = &data[span.offset as usize..span.end() as usize];
        storage
            .write_piece(id, span, bytes, None, None, Duration::ZERO)
            .await
            .unwrap();
    }
    (storage, task.layout())
}
