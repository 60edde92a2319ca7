//! Running a third-party parser that may panic on hostile input (fuzzing found such panics in
//! `tokenizers`' BPE builder and `parquet`'s metadata reader): the panic becomes an error,
//! and its message is kept off stderr, so that a bad file gets one clean error like any other.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many guarded calls this thread is inside (their panics are not printed).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; a panic inside it is returned as `Err(message)` instead of unwinding further.
/// Whatever `f` was building is dropped, so nothing half-built escapes.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    GUARDED.with(|g| g.set(g.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    outcome.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_values_pass_through() {
        assert_eq!(guard(|| 7), Ok(7));
        let v: Vec<u8> = Vec::new();
        let err = guard(|| v[3]).unwrap_err();
        assert!(err.contains("out of bounds"), "{err}");
        assert_eq!(
            guard(|| panic!("named {}", 1)),
            Err::<(), _>("named 1".into())
        );
    }
}
