//! Read-only listings for the HTTP API and dfctl.

use super::*;

impl State {
    /// Every task, by ID.
    pub fn tasks(&self) -> Vec<&Task> {
        let mut tasks: Vec<&Task> = self.tasks.values().collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        tasks
    }

    /// Every host, by ID.
    pub fn hosts(&self) -> Vec<&Host> {
        let mut hosts: Vec<&Host> = self.hosts.values().collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }
}
