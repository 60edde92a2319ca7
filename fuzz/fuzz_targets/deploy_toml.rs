#![no_main]
// cargo fuzz run deploy_toml (scripts/fuzz runs every target); the target is glassbox_fuzz::deploy_toml.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "deploy_toml")
        .expect("a registered target");
    (target.1)(data);
});
