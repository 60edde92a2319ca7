#![no_main]
// cargo fuzz run safetensors (scripts/fuzz runs every target); the target is glassbox_fuzz::safetensors.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "safetensors")
        .expect("a registered target");
    (target.1)(data);
});
