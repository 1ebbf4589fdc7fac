//! Session state: small opaque values a protocol adapter keeps per client
//! across connections and restarts (MQTT's per-subscription options, for
//! instance), by scope (`"mqtt"`) and key (a client id).
//!
//! The core never interprets the bytes. With a journal every change is
//! journaled (a record per key, the latest one live), so the state survives
//! a restart; without one it lives as long as the process.

use crate::Broker;
use crate::store::{Keyed, codec::Enc};
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct StateStore {
    map: RwLock<HashMap<(String, String), Bytes>>,
}

impl StateStore {
    pub(crate) fn restore(&self, scope: String, key: String, value: Bytes) {
        self.map.write().insert((scope, key), value);
    }
}

impl Broker {
    /// Stores `value` under (`scope`, `key`), replacing what was there.
    pub fn save_state(&self, scope: &str, key: &str, value: &[u8]) {
        if let Some(store) = &self.shared.store {
            let mut e = Enc::default();
            e.str(scope).str(key).bytes(value);
            if let Err(err) = store.put(Keyed::State(scope.to_owned(), key.to_owned()), e.0) {
                tracing::error!(scope, key, error = %err, "cannot journal session state");
            }
        }
        self.shared.state.map.write().insert(
            (scope.to_owned(), key.to_owned()),
            Bytes::copy_from_slice(value),
        );
    }

    /// The value stored under (`scope`, `key`).
    pub fn load_state(&self, scope: &str, key: &str) -> Option<Bytes> {
        self.shared
            .state
            .map
            .read()
            .get(&(scope.to_owned(), key.to_owned()))
            .cloned()
    }

    /// Removes the value under (`scope`, `key`).
    pub fn delete_state(&self, scope: &str, key: &str) {
        let had = self
            .shared
            .state
            .map
            .write()
            .remove(&(scope.to_owned(), key.to_owned()))
            .is_some();
        if had
            && let Some(store) = &self.shared.store
            && let Err(err) = store.remove(&Keyed::State(scope.to_owned(), key.to_owned()))
        {
            tracing::error!(scope, key, error = %err, "cannot journal a session state removal");
        }
    }

    /// Every key stored in `scope`.
    pub fn state_keys(&self, scope: &str) -> Vec<String> {
        self.shared
            .state
            .map
            .read()
            .keys()
            .filter(|(s, _)| s == scope)
            .map(|(_, k)| k.clone())
            .collect()
    }
}
