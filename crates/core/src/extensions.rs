//! Damselfly's extensions to the Dragonfly v2 protocol.
//!
//! They travel as gRPC metadata, which official Dragonfly components ignore, so a mixed
//! cluster keeps working: an extension is only used when both sides said they have it.

/// AnnouncePeer request metadata: the features the downloading daemon supports, comma
/// separated.
pub const FEATURES_METADATA_KEY: &str = "x-damselfly-features";

/// The daemon takes extra `NormalTaskResponse`s while it downloads from parents and adds
/// their peers to the running round, instead of reading them only after a reschedule.
pub const FEATURE_PARENT_PUSH: &str = "parent-push";

/// Trusted piece digests (DESIGN.md "Pieces nobody can forge"). A daemon lists it in its
/// AnnouncePeer and StatTask metadata; a scheduler that keeps piece digests answers
/// AnnouncePeer with it in the response metadata. Only then does the daemon report its
/// back-to-source pieces with a trusted (`blake3:`) digest, and only then does StatTask list the
/// task's trusted piece digests; official peers never see either.
pub const FEATURE_PIECE_DIGESTS: &str = "piece-digests";

/// Cut-through forwarding (DESIGN.md "Cut-through forwarding"). A daemon lists it in its
/// SyncPieces request metadata; a parent that has it answers with it in the response metadata
/// and then announces pieces as soon as their write starts. The child asks for those with
/// Vortex's reserved cut-through tag and gets their bytes as they arrive at the parent, then
/// the parent's recorded piece (or an error) as a trailer. Official parents never get the
/// metadata's meaning nor the tag; official children never ask.
pub const FEATURE_CUT_THROUGH: &str = "cut-through";

/// SyncPieces response metadata of a seed peer that rations its announcements (super-seeding):
/// each piece it announces was given to this child alone, or left the seed long enough ago
/// that the swarm should have brought it, so the child should take it from the seed without
/// waiting for its other parents.
pub const RATION_METADATA_KEY: &str = "x-damselfly-ration";

/// The value of [`RATION_METADATA_KEY`].
pub const RATION_EXCLUSIVE: &str = "exclusive";

/// DownloadTask response trailer (gRPC metadata sent with the final OK status) of a download
/// that took bytes from the origin: why, as an [`crate::OriginReason`] description. dfget
/// prints it in its summary; official clients ignore it.
pub const ORIGIN_REASON_TRAILER: &str = "x-damselfly-origin-reason";

/// HTTP response header of the proxy with the same text, when the reason is known before the
/// headers go out.
pub const ORIGIN_REASON_HEADER: &str = "X-Damselfly-Origin-Reason";

/// `DfdaemonDownload.StatTask` request metadata: with the value [`STAT_VIEW_LOCAL`], a
/// Damselfly daemon answers from its own record, with its stored pieces (`dfctl task show`),
/// instead of asking the scheduler. Official daemons ignore it.
pub const STAT_VIEW_METADATA_KEY: &str = "x-damselfly-stat-view";

/// The value of [`STAT_VIEW_METADATA_KEY`].
pub const STAT_VIEW_LOCAL: &str = "local";

/// Whether a comma-separated feature list names `feature`.
pub fn has_feature(list: &str, feature: &str) -> bool {
    list.split(',').any(|f| f.trim() == feature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_lists() {
        assert!(has_feature("parent-push", FEATURE_PARENT_PUSH));
        assert!(has_feature("x, parent-push ,y", FEATURE_PARENT_PUSH));
        assert!(!has_feature("parent-pushy", FEATURE_PARENT_PUSH));
        assert!(!has_feature("", FEATURE_PARENT_PUSH));
    }
}
