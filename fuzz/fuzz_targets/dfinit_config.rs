//! `dfinit.yaml` (Dragonfly's keys): parsing and turning each runtime section into the
//! registries to mirror must not panic; every warning names the file.
#![no_main]
use damselfly_dfinit::config::parse;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("dfinit.yaml");
    let Ok(loaded) = parse(path, text) else {
        return;
    };
    for warning in &loaded.warnings {
        assert!(warning.starts_with("dfinit.yaml: "), "{warning}");
    }
    let _ = loaded.proxy_addr();
    let Some(sections) = loaded.sections() else {
        return;
    };
    if let Some(containerd) = &sections.containerd {
        let _ = containerd.registries(path);
    }
    for section in [&sections.crio, &sections.podman].into_iter().flatten() {
        let _ = section.registries(path, "containerRuntime.crio");
        let _ = section.search();
    }
});
