//! Dragonfly's local dynconfig file (`/etc/dragonfly/dynconfig.yaml`), re-read at every
//! refresh. Every scheduler endpoint it yields must print as text that parses back to it.
#![no_main]
use damselfly_daemon::dynconfig::{DynconfigFile, SchedulerEndpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = damselfly_configfile::parse::<DynconfigFile>(text, "dynconfig") else {
        return;
    };
    for endpoint in parsed.config.endpoints() {
        let printed = endpoint.to_string();
        let again: SchedulerEndpoint = printed
            .parse()
            .unwrap_or_else(|e| panic!("{endpoint:?} printed as {printed:?}: {e}"));
        assert_eq!(again, endpoint);
    }
});
