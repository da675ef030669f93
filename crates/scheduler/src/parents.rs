//! A peer's parents, each with the bandwidth its edge reserves on the parent's host.
//!
//! A peer has few parents (`candidateParentLimit` plus a seed plus mesh pushes, within
//! `meshParentLimit`), so a vector searched in order costs less than a map: a `BTreeMap`
//! allocates a node of about 400 bytes for its first entry and keeps it after its last one
//! leaves, for every peer the scheduler keeps. The ids are the interned ones of the peers
//! map ([`crate::model::Id`]), so an edge costs a reference count, not a copy of the id.

use crate::model::Id;

/// Parent id → bandwidth reserved for the edge, bits per second; in the order added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parents {
    edges: Vec<(Id, u64)>,
}

impl Parents {
    /// Adds the edge; false (and nothing changes) when `parent` is a parent already.
    pub fn insert(&mut self, parent: Id, bandwidth: u64) -> bool {
        if self.contains_key(&parent) {
            return false;
        }
        self.edges.push((parent, bandwidth));
        true
    }

    /// Removes the edge to `parent`, returning its bandwidth.
    pub fn remove(&mut self, parent: &str) -> Option<u64> {
        let at = self.edges.iter().position(|(id, _)| &**id == parent)?;
        let (_, bandwidth) = self.edges.swap_remove(at);
        if self.edges.is_empty() {
            // A finished peer stays as a parent for others: its emptied vector goes.
            self.edges = Vec::new();
        }
        Some(bandwidth)
    }

    pub fn contains_key(&self, parent: &str) -> bool {
        self.edges.iter().any(|(id, _)| &**id == parent)
    }

    /// The parents' ids.
    pub fn keys(&self) -> impl Iterator<Item = &Id> + '_ {
        self.edges.iter().map(|(id, _)| id)
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_added_once_and_removed_with_their_bandwidth() {
        let mut parents = Parents::default();
        assert!(parents.insert("p0".into(), 10));
        assert!(parents.insert("p1".into(), 20));
        assert!(!parents.insert("p0".into(), 99), "a second edge to p0");
        assert_eq!(parents.len(), 2);
        assert!(parents.contains_key("p1") && !parents.contains_key("p2"));
        assert_eq!(parents.remove("p0"), Some(10));
        assert_eq!(parents.remove("p0"), None);
        let left: Vec<&str> = parents.keys().map(|id| &**id).collect();
        assert_eq!(left, ["p1"]);
        assert_eq!(parents.remove("p1"), Some(20));
        assert!(parents.is_empty());
        assert_eq!(parents.edges.capacity(), 0, "the emptied vector was kept");
    }
}
