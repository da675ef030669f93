//! A scheduler `scheduler.yaml` (Dragonfly's keys). A config that parses and validates must
//! serialise and parse back to the same config; its metrics address must not panic.
#![no_main]
use damselfly_scheduler::config::SchedulerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = SchedulerConfig::from_yaml(text) else {
        return;
    };
    let _ = config.listen_addr();
    let _ = config.metrics_addr();
    let yaml = serde_yaml::to_string(&config).expect("a parsed config serialises");
    let again = SchedulerConfig::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("{text:?} re-serialised as {yaml:?} fails: {e}"));
    assert_eq!(again, config, "round trip through {yaml:?}");
});
