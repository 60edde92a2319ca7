#![no_main]
// cargo fuzz run http (scripts/fuzz runs every target); the target is glassbox_fuzz::http.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "http")
        .expect("a registered target");
    (target.1)(data);
});
