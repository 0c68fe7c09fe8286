//! The mapping in force (docs/rules.md R1–R5, R8), shared by every part that applies rules.
//!
//! With `sync.managed_by = "file"` it never changes; with `"console"` the admin console
//! saves a new version in the store and every `work`/`run` process picks it up (within
//! seconds, without a restart) by sending it through the [`SettingsWatch`]. Whoever applies
//! a batch takes one [`SettingsHandle::current`] snapshot and uses it for the whole batch,
//! so an event is applied with the mapping in force when it is applied.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::SyncSettings;

/// Read side: cheap to clone, one per engine / scope resolver / console.
#[derive(Clone, Debug)]
pub struct SettingsHandle {
    rx: watch::Receiver<Arc<SyncSettings>>,
}

/// Write side: held by whatever loads new mapping versions (the console poller).
#[derive(Debug)]
pub struct SettingsWatch {
    tx: watch::Sender<Arc<SyncSettings>>,
}

impl SettingsHandle {
    /// A handle whose mapping never changes (`managed_by = "file"`, tests, benches).
    pub fn fixed(settings: SyncSettings) -> Self {
        Self::channel(settings).1
    }

    /// A handle and the sender that replaces its mapping.
    pub fn channel(settings: SyncSettings) -> (SettingsWatch, Self) {
        let (tx, rx) = watch::channel(Arc::new(settings));
        (SettingsWatch { tx }, SettingsHandle { rx })
    }

    /// The mapping in force now.
    pub fn current(&self) -> Arc<SyncSettings> {
        self.rx.borrow().clone()
    }

    /// Waits until a new mapping is published (for caches keyed on it).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl SettingsWatch {
    /// Puts a new mapping in force for every handle.
    pub fn publish(&self, settings: SyncSettings) {
        self.tx.send_replace(Arc::new(settings));
    }

    /// Another read handle on the same mapping.
    pub fn handle(&self) -> SettingsHandle {
        SettingsHandle {
            rx: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_mapping_is_seen_by_every_handle() {
        let (tx, a) = SettingsHandle::channel(SyncSettings::default());
        let b = tx.handle();
        assert!(!a.current().enabled);
        let next = SyncSettings {
            enabled: true,
            ..SyncSettings::default()
        };
        tx.publish(next);
        assert!(a.current().enabled);
        assert!(b.current().enabled);
    }
}
