//! Why a download went to the origin ("back to source"), in words people can read and a form
//! both ends of the protocol can parse.
//!
//! The reason travels as free text in fields Dragonfly already has
//! (`NeedBackToSourceResponse.description` from the scheduler,
//! `DownloadPeerBackToSourceStartedRequest.description` to it), written as `code: detail`.
//! Official components show the text as is; ours read the code back. A description without
//! a known code (an official scheduler's own words) becomes [`OriginReason::Other`].

use std::fmt;

/// Why the bytes of a task came from the origin rather than from peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginReason {
    /// No other peer holds or fetches the task: this one brings it into the cluster.
    FirstInCluster,
    /// The content fits in one piece: a swarm gains nothing, the daemon fetches it directly.
    SmallFile,
    /// The origin sends no content length, so there is no piece layout to share.
    NoContentLength,
    /// No scheduler answered (none configured, unreachable, silent or gone mid-download).
    NoScheduler { detail: String },
    /// The scheduler has no seed peer to fetch the task for the cluster.
    NoSeedPeer,
    /// The scheduler found no parent for this peer in its scheduling rounds.
    NoParentFound { detail: String },
    /// Parents were scheduled but did not deliver every piece (`maxScheduleCount` decisions).
    ParentsFailed { last_error: String },
    /// The request or a rule asked for the origin (`need_back_to_source`, priority).
    Forced { by: String },
    /// This host is a seed peer: it fetches for the cluster by design.
    SeedPeer,
    /// A description without a known code, kept as sent.
    Other { description: String },
}

/// Codes, one per variant, as written before the `: ` of a description.
const FIRST_IN_CLUSTER: &str = "first-in-cluster";
const SMALL_FILE: &str = "small-file";
const NO_CONTENT_LENGTH: &str = "no-content-length";
const NO_SCHEDULER: &str = "no-scheduler";
const NO_SEED_PEER: &str = "no-seed-peer";
const NO_PARENT_FOUND: &str = "no-parent-found";
const PARENTS_FAILED: &str = "parents-failed";
const FORCED: &str = "forced";
const SEED_PEER: &str = "seed-peer";
const OTHER: &str = "other";

/// Longest header value [`OriginReason::header_value`] gives.
pub const HEADER_VALUE_MAX: usize = 300;

/// Every code, for metric labels and documentation.
pub const ORIGIN_REASON_CODES: [&str; 10] = [
    FIRST_IN_CLUSTER,
    SMALL_FILE,
    NO_CONTENT_LENGTH,
    NO_SCHEDULER,
    NO_SEED_PEER,
    NO_PARENT_FOUND,
    PARENTS_FAILED,
    FORCED,
    SEED_PEER,
    OTHER,
];

impl OriginReason {
    /// The short stable code: a metric label, a header's first word, a JSON value.
    pub fn code(&self) -> &'static str {
        match self {
            Self::FirstInCluster => FIRST_IN_CLUSTER,
            Self::SmallFile => SMALL_FILE,
            Self::NoContentLength => NO_CONTENT_LENGTH,
            Self::NoScheduler { .. } => NO_SCHEDULER,
            Self::NoSeedPeer => NO_SEED_PEER,
            Self::NoParentFound { .. } => NO_PARENT_FOUND,
            Self::ParentsFailed { .. } => PARENTS_FAILED,
            Self::Forced { .. } => FORCED,
            Self::SeedPeer => SEED_PEER,
            Self::Other { .. } => OTHER,
        }
    }

    /// The sentence after the code.
    pub fn detail(&self) -> String {
        match self {
            Self::FirstInCluster => "no other peer holds the task yet".into(),
            Self::SmallFile => "the file fits in one piece and is fetched directly".into(),
            Self::NoContentLength => {
                "the origin sends no content length, so peers cannot share it".into()
            }
            Self::NoScheduler { detail } => format!("no scheduler answered ({detail})"),
            Self::NoSeedPeer => "the scheduler has no seed peer to fetch the task".into(),
            Self::NoParentFound { detail } => format!("no parent found ({detail})"),
            Self::ParentsFailed { last_error } => {
                format!("every parent failed (last error: {last_error})")
            }
            Self::Forced { by } => format!("back-to-source forced by {by}"),
            Self::SeedPeer => "a seed peer fetches the task for the cluster".into(),
            Self::Other { description } => description.clone(),
        }
    }

    /// The wire form, `code: detail`; [`OriginReason::parse`] reads it back.
    pub fn to_description(&self) -> String {
        match self {
            // Foreign words go back out unchanged.
            Self::Other { description } => description.clone(),
            _ => format!("{}: {}", self.code(), self.detail()),
        }
    }

    /// The description as an HTTP header or gRPC metadata value: visible ASCII only (an
    /// error text may hold anything), at most [`HEADER_VALUE_MAX`] bytes.
    pub fn header_value(&self) -> String {
        self.to_description()
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .take(HEADER_VALUE_MAX)
            .collect()
    }

    /// Reads a description: ours by its code, anything else as [`OriginReason::Other`].
    pub fn parse(description: &str) -> Self {
        let (code, rest) = description.split_once(": ").unwrap_or((description, ""));
        let inner = |prefix: &str, suffix: &str| {
            rest.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .unwrap_or(rest)
                .to_string()
        };
        match code {
            FIRST_IN_CLUSTER => Self::FirstInCluster,
            SMALL_FILE => Self::SmallFile,
            NO_CONTENT_LENGTH => Self::NoContentLength,
            NO_SCHEDULER => Self::NoScheduler {
                detail: inner("no scheduler answered (", ")"),
            },
            NO_SEED_PEER => Self::NoSeedPeer,
            NO_PARENT_FOUND => Self::NoParentFound {
                detail: inner("no parent found (", ")"),
            },
            PARENTS_FAILED => Self::ParentsFailed {
                last_error: inner("every parent failed (last error: ", ")"),
            },
            FORCED => Self::Forced {
                by: inner("back-to-source forced by ", ""),
            },
            SEED_PEER => Self::SeedPeer,
            _ => Self::Other {
                description: description.to_string(),
            },
        }
    }
}

impl fmt::Display for OriginReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<OriginReason> {
        vec![
            OriginReason::FirstInCluster,
            OriginReason::SmallFile,
            OriginReason::NoContentLength,
            OriginReason::NoScheduler {
                detail: "connection refused: 127.0.0.1:8002".into(),
            },
            OriginReason::NoSeedPeer,
            OriginReason::NoParentFound {
                detail: "4 scheduling rounds (a), b".into(),
            },
            OriginReason::ParentsFailed {
                last_error: "piece 3: reset by peer (os error 104)".into(),
            },
            OriginReason::Forced {
                by: "the request".into(),
            },
            OriginReason::SeedPeer,
            OriginReason::Other {
                description: "task size is empty".into(),
            },
        ]
    }

    #[test]
    fn descriptions_read_back_to_the_same_reason() {
        for reason in all() {
            let text = reason.to_description();
            assert_eq!(OriginReason::parse(&text), reason, "{text}");
        }
    }

    #[test]
    fn codes_are_distinct_and_listed() {
        let codes: std::collections::HashSet<&str> = all().iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), ORIGIN_REASON_CODES.len());
        assert!(ORIGIN_REASON_CODES.iter().all(|c| codes.contains(c)));
    }

    #[test]
    fn header_values_are_visible_ascii() {
        let reason = OriginReason::ParentsFailed {
            last_error: "broken\npipe — é".repeat(100),
        };
        let value = reason.header_value();
        assert!(value.len() <= HEADER_VALUE_MAX);
        assert!(
            value.starts_with("parents-failed: every parent failed (last error: broken?pipe ? ?")
        );
    }

    #[test]
    fn foreign_descriptions_are_kept_as_sent() {
        for text in ["", "peer needs back-to-source", "unknown: code with colon"] {
            assert_eq!(
                OriginReason::parse(text),
                OriginReason::Other {
                    description: text.into()
                }
            );
        }
        assert_eq!(
            OriginReason::parse("first-in-cluster: no other peer holds the task yet").to_string(),
            "first-in-cluster: no other peer holds the task yet"
        );
    }
}
