//! The state of the sandbox org and the record operations on it, validated as Salesforce does.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::Utc;
use serde_json::{json, Value};

use super::faults::Fault;
use super::index::ExternalIndex;
use super::schema::{
    canonical_id, err, id_suffix, object, FieldDef, Kind, ObjectDef, OBJECTS, SYSTEM,
};
use super::soql::{check_fields, parse_query, sort_key};
use crate::salesforce::{Record, SaveResult, SfError, UpsertResult};
use crate::sandbox::faults::FaultControls;

#[derive(Default)]
pub(super) struct OrgState {
    /// Records by sObject, then by Id. Change them only through `put_record`,
    /// `remove_record` and `restore_records`, which keep `external` in step.
    pub(super) records: BTreeMap<&'static str, BTreeMap<String, Record>>,
    /// Salesforce indexes external-id fields: upserts and uniqueness checks look here
    /// instead of scanning every record (see `index.rs`).
    pub(super) external: ExternalIndex,
    pub(super) seq: u64,
    pub(super) tokens: HashSet<String>,
    /// Injected faults and latency (see `faults.rs`).
    pub(super) faults: FaultControls<Fault>,
    /// The next N write calls over HTTP are held this long, then applied even when the
    /// client gave up (see `Org::hold_next_writes`).
    pub(super) held_writes: Option<(u32, std::time::Duration)>,
    pub(super) api_limit: u64,
    pub(super) api_used: u64,
    /// Answer upsert-updates like API versions before 46.0: 204, no body.
    pub(super) legacy_upsert: bool,
    /// The UTC day `api_used` counts (Salesforce's limit is per 24 hours).
    pub(super) api_day: Option<chrono::NaiveDate>,
    pub(super) page_size: usize,
    pub(super) locators: HashMap<String, (Vec<Record>, usize)>,
    pub(super) counts: BTreeMap<String, u64>,
    /// Public keys (PEM) of connected apps allowed to use the JWT bearer flow.
    pub(super) jwt_keys: Vec<Vec<u8>>,
    /// Parent records (Account, Contact) held locked by "another transaction": the next N
    /// Collections writes of a child of each fail with `UNABLE_TO_LOCK_ROW` for that record.
    pub(super) locked_parents: HashMap<String, u32>,
}

impl OrgState {
    /// A Collections record whose parent (`AccountId` or `Contact__c`) is locked fails alone.
    pub(super) fn check_lock(&mut self, r: &Record) -> Result<(), SfError> {
        for f in ["AccountId", "Contact__c"] {
            let Some(parent) = r.get(f).and_then(Value::as_str) else {
                continue;
            };
            if let Some(n) = self.locked_parents.get_mut(parent) {
                if *n > 0 {
                    *n -= 1;
                    return Err(err(
                        400,
                        "UNABLE_TO_LOCK_ROW",
                        "unable to obtain exclusive access to this record or 1 records",
                        &[],
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn now() -> Value {
    json!(Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
}

impl OrgState {
    pub(super) fn new_id(&mut self, o: &ObjectDef) -> String {
        self.seq += 1;
        const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut n = self.seq;
        let mut tail = Vec::new();
        while n > 0 {
            tail.push(B62[(n % 62) as usize]);
            n /= 62;
        }
        tail.resize(9, b'0');
        tail.reverse();
        let id15 = format!("{}5g0{}", o.prefix, String::from_utf8(tail).unwrap());
        format!("{id15}{}", id_suffix(&id15))
    }

    pub(super) fn find(&self, o: &ObjectDef, id: &str) -> Option<&Record> {
        self.records.get(o.name)?.get(&canonical_id(id)?)
    }

    /// Check and normalise the fields of a write (`creating`: required fields apply).
    pub(super) fn validate(
        &self,
        o: &ObjectDef,
        fields: &Record,
        creating: bool,
        except: Option<&str>,
    ) -> Result<Record, SfError> {
        let mut clean = Record::new();
        for (k, v) in fields {
            if k == "attributes" {
                continue;
            }
            let Some(def) = o.field(k) else {
                return Err(err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{k}' on sobject of type {}", o.name),
                    &[k],
                ));
            };
            if matches!(
                def.name,
                "Id" | "CreatedDate" | "LastModifiedDate" | "SystemModstamp"
            ) {
                if def.name == "Id" {
                    continue; // carried in the URL or by Collections
                }
                return Err(err(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    &format!("Unable to create/update fields: {}", def.name),
                    &[def.name],
                ));
            }
            let v = match (def.kind, v) {
                (_, Value::Null) => Value::Null,
                (Kind::Double, Value::Number(_)) => v.clone(),
                (Kind::Double, _) => {
                    return Err(err(
                        400,
                        "JSON_PARSER_ERROR",
                        &format!("Cannot deserialize instance of double from {v}"),
                        &[def.name],
                    ))
                }
                (_, Value::String(s)) => {
                    if def.kind == Kind::Email
                        && !(s.contains('@')
                            && s.rsplit('@').next().is_some_and(|d| d.contains('.')))
                    {
                        return Err(err(
                            400,
                            "INVALID_EMAIL_ADDRESS",
                            &format!("Email: invalid email address: {s}"),
                            &[def.name],
                        ));
                    }
                    if let Kind::Reference(target) = def.kind {
                        let t = object(target).expect("static");
                        if self.find(t, s).is_none() {
                            return Err(err(
                                400,
                                "INVALID_CROSS_REFERENCE_KEY",
                                &format!("invalid cross reference id: {s}"),
                                &[def.name],
                            ));
                        }
                        Value::String(canonical_id(s).unwrap_or_else(|| s.clone()))
                    } else {
                        v.clone()
                    }
                }
                (Kind::String | Kind::Email, Value::Number(n)) => Value::String(n.to_string()),
                _ => {
                    return Err(err(
                        400,
                        "JSON_PARSER_ERROR",
                        &format!("Cannot deserialize {v} for field {}", def.name),
                        &[def.name],
                    ))
                }
            };
            if def.required && v.is_null() {
                return Err(err(
                    400,
                    "REQUIRED_FIELD_MISSING",
                    &format!("Required fields are missing: [{}]", def.name),
                    &[def.name],
                ));
            }
            if def.external_id && !v.is_null() {
                let dup = match v.as_str() {
                    Some(text) => self
                        .external
                        .ids(o, def, text)
                        .into_iter()
                        .find(|id| Some(id.as_str()) != except),
                    None => self
                        .records
                        .get(o.name)
                        .into_iter()
                        .flatten()
                        .find(|(id, r)| Some(id.as_str()) != except && r.get(def.name) == Some(&v))
                        .map(|(id, _)| id.clone()),
                };
                if let Some(id) = dup {
                    return Err(err(
                        400,
                        "DUPLICATE_VALUE",
                        &format!(
                            "duplicate value found: {} duplicates value on record with id: {id}",
                            def.name
                        ),
                        &[def.name],
                    ));
                }
            }
            clean.insert(def.name.to_string(), v);
        }
        if creating {
            for def in o.fields.iter().filter(|d| d.required) {
                if clean.get(def.name).is_none_or(Value::is_null) {
                    return Err(err(
                        400,
                        "REQUIRED_FIELD_MISSING",
                        &format!("Required fields are missing: [{}]", def.name),
                        &[def.name],
                    ));
                }
            }
        }
        Ok(clean)
    }

    pub(super) fn create(&mut self, sobject: &str, fields: &Record) -> Result<String, SfError> {
        let o = object(sobject)?;
        if fields.get("Id").is_some_and(|v| !v.is_null()) {
            return Err(err(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                "cannot specify Id in an insert call",
                &["Id"],
            ));
        }
        let mut rec = self.validate(o, fields, true, None)?;
        let id = self.new_id(o);
        rec.insert("Id".into(), json!(id));
        rec.insert("CreatedDate".into(), now());
        rec.insert("LastModifiedDate".into(), now());
        rec.insert("SystemModstamp".into(), now());
        self.put_record(o, id.clone(), rec);
        Ok(id)
    }

    pub(super) fn update(
        &mut self,
        sobject: &str,
        id: &str,
        fields: &Record,
    ) -> Result<(), SfError> {
        let o = object(sobject)?;
        let Some(key) = canonical_id(id)
            .filter(|k| self.records.get(o.name).is_some_and(|t| t.contains_key(k)))
        else {
            return Err(err(
                404,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ));
        };
        let clean = self.validate(o, fields, false, Some(&key))?;
        let mut rec = self.records[o.name][&key].clone();
        for (k, v) in clean {
            rec.insert(k, v);
        }
        rec.insert("LastModifiedDate".into(), now());
        rec.insert("SystemModstamp".into(), now());
        self.put_record(o, key, rec);
        Ok(())
    }

    pub(super) fn delete(&mut self, sobject: &str, id: &str) -> Result<(), SfError> {
        let o = object(sobject)?;
        let key = canonical_id(id)
            .ok_or_else(|| err(400, "MALFORMED_ID", &format!("malformed id {id}"), &[]))?;
        match self.remove_record(o, &key) {
            Some(_) => Ok(()),
            None => Err(err(404, "ENTITY_IS_DELETED", "entity is deleted", &[])),
        }
    }

    pub(super) fn by_external(
        &self,
        o: &ObjectDef,
        field: &str,
        value: &str,
    ) -> Result<(&'static FieldDef, Vec<String>), SfError> {
        let def = o
            .field(field)
            .filter(|d| d.external_id || d.name == "Id")
            .ok_or_else(|| {
                err(
                    400,
                    "NOT_FOUND",
                    &format!(
                        "Provided external ID field does not exist or is not accessible: {field}"
                    ),
                    &[],
                )
            })?;
        let ids = if def.external_id {
            self.external.ids(o, def, value)
        } else {
            // `Id` itself.
            canonical_id(value)
                .filter(|k| self.records.get(o.name).is_some_and(|t| t.contains_key(k)))
                .into_iter()
                .collect()
        };
        Ok((def, ids))
    }

    pub(super) fn upsert(
        &mut self,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError> {
        let o = object(sobject)?;
        let (def, ids) = self.by_external(o, field, value)?;
        if let Some(v) = fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(def.name))
            .map(|(_, v)| v)
        {
            if v.as_str() != Some(value) {
                return Err(err(
                    400,
                    "INVALID_FIELD",
                    &format!("The {} field in the body does not match the URL", def.name),
                    &[def.name],
                ));
            }
        }
        match ids.as_slice() {
            [] => {
                let mut with_key = fields.clone();
                with_key.insert(def.name.to_string(), json!(value));
                let id = self.create(o.name, &with_key)?;
                Ok(UpsertResult { id, created: true })
            }
            [id] => {
                let id = id.clone();
                self.update(o.name, &id, fields)?;
                Ok(UpsertResult { id, created: false })
            }
            many => Err(SfError::MultipleMatches { ids: many.to_vec() }),
        }
    }

    /// Run a query: the records (none for `COUNT()`) and `totalSize`.
    pub(super) fn query(&self, soql: &str) -> Result<(Vec<Record>, usize), SfError> {
        let q = parse_query(soql).map_err(|m| err(400, "MALFORMED_QUERY", &m, &[]))?;
        let o = object(&q.from).map_err(|_| {
            err(
                400,
                "INVALID_TYPE",
                &format!("sObject type '{}' is not supported.", q.from),
                &[],
            )
        })?;
        let mut select = Vec::new();
        for f in &q.fields {
            let def = o.field(f).ok_or_else(|| {
                err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on entity '{}'", o.name),
                    &[],
                )
            })?;
            select.push(def.name);
        }
        if let Some(w) = &q.filter {
            check_fields(w, o)?;
        }
        let mut rows: Vec<&Record> = self
            .records
            .get(o.name)
            .into_iter()
            .flatten()
            .map(|(_, r)| r)
            .filter(|r| q.filter.as_ref().is_none_or(|w| w.eval(r)))
            .collect();
        if let Some((field, desc)) = &q.order {
            let def = o.field(field).ok_or_else(|| {
                err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{field}'"),
                    &[],
                )
            })?;
            rows.sort_by(|a, b| {
                let ka = a.get(def.name).map(sort_key).unwrap_or_default();
                let kb = b.get(def.name).map(sort_key).unwrap_or_default();
                if *desc {
                    kb.cmp(&ka)
                } else {
                    ka.cmp(&kb)
                }
            });
        }
        if let Some(n) = q.limit {
            rows.truncate(n);
        }
        if q.count {
            return Ok((Vec::new(), rows.len()));
        }
        let total = rows.len();
        let rows = rows
            .into_iter()
            .map(|r| {
                let id = r["Id"].as_str().unwrap_or_default();
                let mut out = Record::new();
                out.insert("attributes".into(), json!({"type": o.name, "url": format!("/services/data/v61.0/sobjects/{}/{id}", o.name)}));
                for f in &select {
                    out.insert(f.to_string(), r.get(*f).cloned().unwrap_or(Value::Null));
                }
                out
            })
            .collect();
        Ok((rows, total))
    }
}

pub(super) fn record_type(r: &Record) -> Option<&str> {
    r.get("attributes")?.get("type")?.as_str()
}

pub(super) fn ok_result(id: String, created: Option<bool>) -> SaveResult {
    SaveResult {
        id: Some(id),
        success: true,
        errors: vec![],
        created,
    }
}

/// One record of a Collections create (`attributes.type` names the sObject).
pub(super) fn collection_create(s: &mut OrgState, r: &Record) -> Result<SaveResult, SfError> {
    s.check_lock(r)?;
    let t = record_type(r)
        .ok_or_else(|| err(400, "INVALID_TYPE", "attributes.type is required", &[]))?;
    s.create(t, r).map(|id| ok_result(id, Some(true)))
}

/// One record of a Collections update (`Id` and `attributes.type` required).
pub(super) fn collection_update(s: &mut OrgState, r: &Record) -> Result<SaveResult, SfError> {
    s.check_lock(r)?;
    let t = record_type(r)
        .ok_or_else(|| err(400, "INVALID_TYPE", "attributes.type is required", &[]))?;
    let id = r
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            err(
                400,
                "MISSING_ARGUMENT",
                "Id not specified in an update call",
                &[],
            )
        })?
        .to_string();
    s.update(t, &id, r)
        .map(|()| ok_result(canonical_id(&id).unwrap_or(id), None))
}

/// One record of a Collections upsert: the external id comes from the record.
pub(super) fn upsert_one(
    s: &mut OrgState,
    sobject: &str,
    ext_field: &str,
    r: &Record,
) -> Result<SaveResult, SfError> {
    s.check_lock(r)?;
    let key = r
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(ext_field))
        .and_then(|(_, v)| v.as_str().map(String::from))
        .ok_or_else(|| {
            err(
                400,
                "MISSING_ARGUMENT",
                &format!("{ext_field} not specified"),
                &[ext_field],
            )
        })?;
    s.upsert(sobject, ext_field, &key, r)
        .map(|u| ok_result(u.id, Some(u.created)))
}

pub(super) fn delete_any(s: &mut OrgState, id: &str) -> Result<(), SfError> {
    let o = OBJECTS
        .iter()
        .find(|o| id.starts_with(o.prefix))
        .ok_or_else(|| err(400, "MALFORMED_ID", &format!("malformed id {id}"), &[]))?;
    s.delete(o.name, id)
}

pub(super) fn delete_external(
    s: &mut OrgState,
    sobject: &str,
    ext_field: &str,
    ext_id: &str,
) -> Result<(), SfError> {
    let o = object(sobject)?;
    let (_, ids) = s.by_external(o, ext_field, ext_id)?;
    match ids.as_slice() {
        [] => Err(err(
            404,
            "NOT_FOUND",
            "Provided external ID field does not exist or is not accessible",
            &[],
        )),
        [id] => {
            let id = id.clone();
            s.delete(o.name, &id)
        }
        many => Err(SfError::MultipleMatches { ids: many.to_vec() }),
    }
}

pub(super) fn get_record(
    s: &OrgState,
    sobject: &str,
    id: &str,
    fields: &[&str],
) -> Result<Record, SfError> {
    let o = object(sobject)?;
    let r = s.find(o, id).ok_or_else(|| {
        err(
            404,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        )
    })?;
    let mut out = Record::new();
    out.insert("attributes".into(), json!({"type": o.name, "url": format!("/services/data/v61.0/sobjects/{}/{}", o.name, r["Id"].as_str().unwrap_or_default())}));
    if fields.is_empty() {
        for def in SYSTEM.iter().chain(o.fields.iter()) {
            out.insert(
                def.name.into(),
                r.get(def.name).cloned().unwrap_or(Value::Null),
            );
        }
    } else {
        for f in fields {
            let def = o.field(f).ok_or_else(|| {
                err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on sobject of type {}", o.name),
                    &[],
                )
            })?;
            out.insert(
                def.name.into(),
                r.get(def.name).cloned().unwrap_or(Value::Null),
            );
        }
    }
    Ok(out)
}
