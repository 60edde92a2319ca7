#![no_main]
// cargo fuzz run store_manifest (scripts/fuzz runs every target); the target is glassbox_fuzz::store_manifest.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "store_manifest")
        .expect("a registered target");
    (target.1)(data);
});
