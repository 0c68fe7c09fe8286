//! The sandbox org's index of external-id fields, and the record operations that keep it
//! in step: every change to `OrgState::records` goes through `put_record`,
//! `remove_record` or `restore_records`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::schema::{object, FieldDef, ObjectDef};
use super::state::OrgState;
use crate::salesforce::Record;

/// (sObject, external-id field) → value → Ids.
#[derive(Default)]
pub(super) struct ExternalIndex(
    HashMap<(&'static str, &'static str), HashMap<String, BTreeSet<String>>>,
);

impl ExternalIndex {
    fn add(&mut self, o: &ObjectDef, id: &str, rec: &Record) {
        for def in o.fields.iter().filter(|d| d.external_id) {
            if let Some(v) = rec.get(def.name).and_then(Value::as_str) {
                self.0
                    .entry((o.name, def.name))
                    .or_default()
                    .entry(v.to_string())
                    .or_default()
                    .insert(id.to_string());
            }
        }
    }

    fn remove(&mut self, o: &ObjectDef, id: &str, rec: &Record) {
        for def in o.fields.iter().filter(|d| d.external_id) {
            let Some(v) = rec.get(def.name).and_then(Value::as_str) else {
                continue;
            };
            if let Some(values) = self.0.get_mut(&(o.name, def.name)) {
                if let Some(ids) = values.get_mut(v) {
                    ids.remove(id);
                    if ids.is_empty() {
                        values.remove(v);
                    }
                }
            }
        }
    }

    /// Ids of the records of `o` whose external-id field `def` holds `value`.
    pub(super) fn ids(&self, o: &ObjectDef, def: &FieldDef, value: &str) -> Vec<String> {
        self.0
            .get(&(o.name, def.name))
            .and_then(|values| values.get(value))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl OrgState {
    /// Store `rec` under `id` (a new record or a whole replacement), indexed.
    pub(super) fn put_record(&mut self, o: &ObjectDef, id: String, rec: Record) {
        let table = self.records.entry(o.name).or_default();
        if let Some(old) = table.remove(&id) {
            self.external.remove(o, &id, &old);
        }
        self.external.add(o, &id, &rec);
        self.records.entry(o.name).or_default().insert(id, rec);
    }

    pub(super) fn remove_record(&mut self, o: &ObjectDef, id: &str) -> Option<Record> {
        let rec = self.records.get_mut(o.name)?.remove(id)?;
        self.external.remove(o, id, &rec);
        Some(rec)
    }

    /// Put back a snapshot of every record (an `allOrNone` rollback), re-indexed.
    pub(super) fn restore_records(
        &mut self,
        snapshot: BTreeMap<&'static str, BTreeMap<String, Record>>,
    ) {
        self.records = snapshot;
        let mut index = ExternalIndex::default();
        for (name, table) in &self.records {
            let o = object(name).expect("stored objects are known");
            for (id, rec) in table {
                index.add(o, id, rec);
            }
        }
        self.external = index;
    }
}
