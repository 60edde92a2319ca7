#![no_main]
// cargo fuzz run chat_template (scripts/fuzz runs every target); the target is glassbox_fuzz::chat_template.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "chat_template")
        .expect("a registered target");
    (target.1)(data);
});
