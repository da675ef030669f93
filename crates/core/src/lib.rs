//! Identifiers, piece layout and digests of the Dragonfly v2 protocol.
//!
//! Everything here must be bit-identical to the official Dragonfly client, or our peers and
//! official peers stop sharing tasks and pieces. The unit tests pin each rule with the
//! upstream test vectors from `shared/reference/ids-and-vectors.md`.
//!
//! Beside them, [`admission`]: the per-address connection cap every listening server shares
//! (piece servers, proxy, metrics and health), kept here because it needs only `std`.

pub mod admission;
pub mod digest;
pub mod error;
pub mod extensions;
pub mod id;
pub mod limits;
pub mod origin;
pub mod piece;
pub mod relay;
pub mod ring;
pub mod secrets;

pub use digest::{piece_digest, Digest, DigestAlgorithm, DigestHasher};
pub use error::CoreError;
pub use id::{host_id, peer_id, TaskIdRule, TaskIdSpec, DEFAULT_FILTERED_QUERY_PARAMS};
pub use limits::MAX_GRPC_MESSAGE_SIZE;
pub use origin::{OriginReason, ORIGIN_REASON_CODES};
pub use piece::{PieceLayout, PieceSpan, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH};
pub use relay::{RelayPath, StoreId, MAX_RELAY_HOPS};
pub use ring::SchedulerRing;
pub use secrets::{is_secret_header, without_secrets, SECRET_HEADERS};
