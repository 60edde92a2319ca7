#![no_main]
// cargo fuzz run model_config (scripts/fuzz runs every target); the target is glassbox_fuzz::model_config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "model_config")
        .expect("a registered target");
    (target.1)(data);
});
