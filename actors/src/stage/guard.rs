//! One record's stage work, guarded: whatever goes wrong with a record becomes that record's
//! failure, never the stage's.
//!
//! Invariant: an error *or a panic* inside [`guarded`] work comes back as `(class, text)` for the
//! record at hand; the converter and the transformer (which run on sync-thread pools and must not
//! go down on bad input) both call it, so it lives here, below both.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs one record's stage work. Its error, or a panic on some input (which must not take the
/// stage down), becomes that record's failure: `(class, text)`.
pub fn guarded<T, E: std::fmt::Display>(
    work: impl FnOnce() -> Result<T, E>,
    class_of: impl Fn(&E) -> &'static str,
) -> Result<T, (&'static str, String)> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((class_of(&e), e.to_string())),
        Err(panic) => Err(("internal_panic", panic_text(&panic))),
    }
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (panic) while processing the record: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_panics_become_a_class_and_a_text() {
        let ok: Result<u8, _> = guarded(|| Ok::<u8, std::fmt::Error>(7), |_| "never");
        assert_eq!(ok, Ok(7));
        let err = guarded(|| Err::<u8, _>(std::fmt::Error), |_| "fmt");
        assert_eq!(
            err,
            Err((
                "fmt",
                "an error occurred when formatting an argument".into()
            ))
        );
        let panicked = guarded(
            || -> Result<u8, std::fmt::Error> { panic!("boom {}", 1) },
            |_| "never",
        );
        let (class, text) = panicked.unwrap_err();
        assert_eq!(class, "internal_panic");
        assert!(text.contains("boom 1"), "{text}");
    }
}
