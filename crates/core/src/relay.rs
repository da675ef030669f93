//! Relay paths: the piece stores a piece's bytes passed through while they were still
//! arriving there (cut-through forwarding, a Damselfly extension official peers never see).
//!
//! A store forwards a piece it is still receiving from another store that is itself still
//! receiving it, so the last piece of a task reaches every host at the origin's pace instead
//! of one whole piece time per hop. Two rules keep such chains sound:
//! - no cycle: a store never follows an arriving copy whose path already passed through it
//!   (its own bytes would feed themselves, and nothing would move until a timeout);
//! - bounded depth: a write whose path is [`MAX_RELAY_HOPS`] long is not forwarded before it
//!   is recorded, so one slow link or one abandoned write stalls a bounded number of stores.

use crate::error::CoreError;
use std::sync::Arc;

/// Stores a piece's arriving bytes may pass through before a store holds them back until
/// they are recorded. bench/netns (8 hosts, 64 MiB): one hop left the last host 1.3-1.6 s
/// behind the seed's last piece, unbounded relays 0.4-0.8 s; four hops cover a fan-out of two
/// per store over 16 hosts.
pub const MAX_RELAY_HOPS: usize = 4;

/// Entries accepted in a path read from the wire: a peer announcing a longer one is broken.
const MAX_WIRE_ENTRIES: usize = 16;

/// Characters of a store ID: 128 random bits in hex.
const STORE_ID_LEN: usize = 32;

/// One piece store (one daemon's storage), random for each time it is opened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreId(String);

impl StoreId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let valid = text.len() == STORE_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(CoreError::InvalidRelayPath(format!(
                "{text:?} is not a store ID ({STORE_ID_LEN} lowercase hex digits)"
            )));
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The stores a write's bytes came through while still arriving, oldest first; empty for
/// bytes from the origin or from a parent's recorded copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPath(Arc<[StoreId]>);

impl RelayPath {
    /// Stores on the path.
    pub fn hops(&self) -> usize {
        self.0.len()
    }

    /// Whether the bytes already passed through `store`.
    pub fn passed(&self, store: &StoreId) -> bool {
        self.0.contains(store)
    }

    /// Whether a write with this path may be forwarded while it still arrives.
    pub fn may_relay(&self) -> bool {
        self.hops() < MAX_RELAY_HOPS
    }

    /// This path with `store` at its end: what a store forwarding these bytes tells its child.
    pub fn then(&self, store: &StoreId) -> Self {
        Self(
            self.0
                .iter()
                .chain(std::iter::once(store))
                .cloned()
                .collect(),
        )
    }

    /// Comma-separated store IDs (empty for an empty path).
    pub fn to_wire(&self) -> String {
        let ids: Vec<&str> = self.0.iter().map(StoreId::as_str).collect();
        ids.join(",")
    }

    /// Reads [`Self::to_wire`]'s form; an empty string is an empty path (what a Damselfly peer
    /// from before relay paths sends: it never forwarded relayed bytes).
    pub fn from_wire(text: &str) -> Result<Self, CoreError> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let entries = text.split(',').take(MAX_WIRE_ENTRIES + 1);
        let ids = entries.map(StoreId::parse).collect::<Result<Vec<_>, _>>()?;
        if ids.len() > MAX_WIRE_ENTRIES {
            return Err(CoreError::InvalidRelayPath(format!(
                "more than {MAX_WIRE_ENTRIES} stores"
            )));
        }
        Ok(Self(ids.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_grows_by_one_store_per_relay_and_stops_relaying_at_the_cap() {
        let stores: Vec<StoreId> = (0..MAX_RELAY_HOPS).map(|_| StoreId::random()).collect();
        let mut path = RelayPath::default();
        assert!(path.may_relay());
        for (hops, store) in stores.iter().enumerate() {
            assert_eq!(path.hops(), hops);
            assert!(path.may_relay(), "{hops} hops may still relay");
            assert!(!path.passed(store));
            path = path.then(store);
            assert!(path.passed(store));
        }
        assert!(!path.may_relay(), "{MAX_RELAY_HOPS} hops are held back");
        assert_eq!(RelayPath::from_wire(&path.to_wire()).unwrap(), path);
    }

    #[test]
    fn wire_paths_are_parsed_or_refused() {
        assert_eq!(RelayPath::from_wire("").unwrap(), RelayPath::default());
        let id = StoreId::random();
        assert_ne!(id, StoreId::random());
        let one = RelayPath::from_wire(id.as_str()).unwrap();
        assert!(one.passed(&id));
        for bad in [
            ",",
            "xyz",
            &format!("{},", id.as_str()),
            &id.as_str().to_uppercase(),
            &format!("{} ", id.as_str()),
            &"a".repeat(STORE_ID_LEN + 1),
        ] {
            assert!(RelayPath::from_wire(bad).is_err(), "{bad:?}");
        }
        let long = vec![id.as_str(); MAX_WIRE_ENTRIES + 1].join(",");
        assert!(RelayPath::from_wire(&long).is_err());
        let longest = vec![id.as_str(); MAX_WIRE_ENTRIES].join(",");
        assert_eq!(
            RelayPath::from_wire(&longest).unwrap().hops(),
            MAX_WIRE_ENTRIES
        );
    }
}
