//! Who may hold a server's connections: a cap on the sockets one address keeps open, so one
//! peer (or one attacker) cannot take the slots every other peer needs.
//!
//! An over-cap connection is closed at once instead of waiting in the listen backlog, where
//! it would delay the honest peers queued behind it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per source address and refuses past `max_per_address`, and past
/// `max_total` over all addresses.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    max_per_address: usize,
    max_total: usize,
    open: Arc<Mutex<OpenConnections>>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Held for as long as one connection is open; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    address: IpAddr,
    open: Arc<Mutex<OpenConnections>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    AddressFull,
    ServerFull,
}

impl ConnectionLimits {
    pub fn new(max_per_address: usize, max_total: usize) -> Self {
        Self {
            max_per_address: max_per_address.max(1),
            max_total: max_total.max(1),
            open: Arc::new(Mutex::new(OpenConnections::default())),
        }
    }

    /// A slot for a new connection from `address`, or why there is none.
    pub fn admit(&self, address: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refused::ServerFull);
        }
        let count = open.by_address.entry(address).or_insert(0);
        if *count >= self.max_per_address {
            return Err(Refused::AddressFull);
        }
        *count += 1;
        open.total += 1;
        Ok(ConnectionSlot {
            address,
            open: Arc::clone(&self.open),
        })
    }

    /// Connections open now (for tests and metrics).
    pub fn open_connections(&self) -> usize {
        self.open.lock().map(|open| open.total).unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let limits = ConnectionLimits::new(2, 3);
        let a1 = limits.admit(ip(1)).unwrap();
        let _a2 = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refused::AddressFull);
        let _b1 = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refused::ServerFull);
        drop(a1);
        assert_eq!(limits.open_connections(), 2);
        let _c1 = limits.admit(ip(3)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refused::ServerFull);
    }

    #[test]
    fn slots_are_returned_when_dropped() {
        let limits = ConnectionLimits::new(1, 10);
        for _ in 0..5 {
            let slot = limits.admit(ip(9)).unwrap();
            drop(slot);
        }
        assert_eq!(limits.open_connections(), 0);
    }
}
