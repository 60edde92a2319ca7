#![no_main]
// cargo fuzz run tokenizer_json (scripts/fuzz runs every target); the target is glassbox_fuzz::tokenizer_json.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "tokenizer_json")
        .expect("a registered target");
    (target.1)(data);
});
