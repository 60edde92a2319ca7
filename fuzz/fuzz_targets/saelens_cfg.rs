#![no_main]
// cargo fuzz run saelens_cfg (scripts/fuzz runs every target); the target is glassbox_fuzz::saelens_cfg.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "saelens_cfg")
        .expect("a registered target");
    (target.1)(data);
});
