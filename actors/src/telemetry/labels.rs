//! Bounded label values. A label taken from the data, such as the `table` of a record routed by
//! one of its fields, would add time series for every distinct value it ever takes, and a
//! Prometheus server holding millions of series is an outage of its own. The first
//! `metrics.max_table_labels` tables keep their names; later ones share the label [`OTHER`] (their
//! rows still count, under that label).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use metrics::SharedString;

/// The label shared by values past the limit.
pub const OTHER: &str = "_other";

/// Label values seen so far, up to a limit.
pub struct BoundedLabels {
    limit: AtomicUsize,
    seen: RwLock<BTreeSet<String>>,
}

impl BoundedLabels {
    pub const fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            seen: RwLock::new(BTreeSet::new()),
        }
    }

    /// Changes the limit (values already given a label keep it).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// `value` as a label: itself if it was seen before or there is room, else [`OTHER`].
    pub fn label(&self, value: &str) -> SharedString {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return SharedString::from(value.to_owned());
        }
        drop(seen);
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) || seen.len() < self.limit.load(Ordering::Relaxed) {
            seen.insert(value.to_owned());
            SharedString::from(value.to_owned())
        } else {
            SharedString::const_str(OTHER)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_limit_share_one_label() {
        let labels = BoundedLabels::new(2);
        assert_eq!(&*labels.label("a"), "a");
        assert_eq!(&*labels.label("b"), "b");
        assert_eq!(&*labels.label("c"), OTHER);
        assert_eq!(
            &*labels.label("a"),
            "a",
            "a value seen before keeps its label"
        );
        labels.set_limit(3);
        assert_eq!(&*labels.label("d"), "d");
        assert_eq!(&*labels.label("e"), OTHER);
    }
}
