//! A `dfdaemon.yaml` (Dragonfly's keys). A config that parses must serialise and parse back
//! to the same config, and validating it must not panic.
#![no_main]
use damselfly_daemon::DaemonConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = DaemonConfig::from_yaml(text) else {
        return;
    };
    let _ = config.validate();
    let _ = config.scheduler_source();
    let yaml = serde_yaml::to_string(&config).expect("a parsed config serialises");
    let again = DaemonConfig::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("{text:?} re-serialised as {yaml:?} fails: {e}"));
    assert_eq!(again, config, "round trip through {yaml:?}");
});
