//! What the state's unit tests build on: a default-policy state, hosts and downloads.

use dragonfly_api::common::v2 as pb;

use super::{Policy, State};
use crate::config::SchedulingConfig;

/// Pieces of every test download.
const PIECE_LENGTH: u64 = 4 << 20;

pub(super) fn state() -> State {
    State::new(Policy::new(&SchedulingConfig::default(), true))
}

/// A host on 127.0.0.1:4000; `host_type` 0 is a normal peer, 1 a super seed.
pub(super) fn host(id: &str, host_type: u32) -> pb::Host {
    pb::Host {
        id: id.into(),
        r#type: host_type,
        ip: "127.0.0.1".into(),
        port: 4000,
        download_port: 4000,
        ..Default::default()
    }
}

/// A 64 MiB download of 16 pieces.
pub(super) fn download() -> pb::Download {
    download_of(64 << 20)
}

/// A download of `content_length` bytes in 4 MiB pieces, 8 at a time.
pub(super) fn download_of(content_length: u64) -> pb::Download {
    pb::Download {
        url: "http://o/f".into(),
        actual_content_length: Some(content_length),
        actual_piece_length: Some(PIECE_LENGTH),
        actual_piece_count: Some(content_length.div_ceil(PIECE_LENGTH)),
        concurrent_piece_count: Some(8),
        ..Default::default()
    }
}
