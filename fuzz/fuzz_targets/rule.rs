#![no_main]
// cargo fuzz run rule (scripts/fuzz runs every target); the target is glassbox_fuzz::rule.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "rule")
        .expect("a registered target");
    (target.1)(data);
});
