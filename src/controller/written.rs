//! The resourceVersion of each run's last status write by this process. A cached run that
//! shows exactly that version holds the ledger this process last wrote, so its reconcile can
//! plan from the cache; any other version (older: the watch has not caught up; newer: someone
//! else wrote) is read fresh. Equality only: resourceVersions are opaque, never ordered.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct LastWrites(Mutex<HashMap<String, String>>);

impl LastWrites {
    pub fn wrote(&self, uid: &str, resource_version: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match resource_version {
            Some(version) => map.insert(uid.to_string(), version),
            None => map.remove(uid),
        };
    }

    /// Whether a run cached at `resource_version` is the one this process last wrote.
    pub fn is_current(&self, uid: &str, resource_version: Option<&str>) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        resource_version.is_some_and(|v| map.get(uid).is_some_and(|w| w == v))
    }

    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_version_last_written_is_current() {
        let writes = LastWrites::default();
        assert!(
            !writes.is_current("a", Some("5")),
            "nothing written yet: read fresh"
        );
        writes.wrote("a", Some("7".into()));
        assert!(writes.is_current("a", Some("7")));
        assert!(
            !writes.is_current("a", Some("6")),
            "the watch has not caught up"
        );
        assert!(
            !writes.is_current("a", Some("9")),
            "someone else wrote since"
        );
        assert!(!writes.is_current("a", None));
        assert!(!writes.is_current("b", Some("7")));
        writes.forget("a");
        assert!(!writes.is_current("a", Some("7")));
    }
}
