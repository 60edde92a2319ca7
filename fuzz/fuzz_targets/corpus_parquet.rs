#![no_main]
// cargo fuzz run corpus_parquet (scripts/fuzz runs every target); the target is glassbox_fuzz::corpus_parquet.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = glassbox_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == "corpus_parquet")
        .expect("a registered target");
    (target.1)(data);
});
