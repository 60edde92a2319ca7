#![no_main]
// cargo fuzz run gguf (scripts/fuzz runs every target); the target is glassbox_fuzz::gguf.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "gguf")
        .expect("a registered target");
    (target.1)(data);
});
