//! What the Damselfly binaries share beyond the library crates: logging set-up with
//! Dragonfly's flags.

pub mod dfctl;
pub mod logging;
