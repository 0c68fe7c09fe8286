//! A faithful in-memory Salesforce org (docs/rules.md "Salesforce") for tests and `syncback demo`.
//!
//! It speaks the REST wire format the client uses — OAuth token endpoint, SOQL query
//! with `nextRecordsUrl` paging, sObject create/get/update/delete, upsert by external id
//! (201/200/300), sObject Collections, describe — with Salesforce's status codes, error
//! bodies `[{"message","errorCode","fields"}]`, 18-character ids and
//! `Sforce-Limit-Info`. It is also a [`SalesforceApi`] in-process, with the same
//! semantics and counters, so the rules engine can be tested without network.
//!
//! Objects: `Account`, `Contact`, `SkillSync_Enrollment__c`, `SkillSync_Certification__c`
//! with required fields, unique external ids, and reference checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::salesforce::soql::{like_matches, Lexer, Token};
use crate::salesforce::{
    ApiError, Describe, FieldDescribe, Record, SalesforceApi, SaveResult, SfError, UpsertResult,
};

/// Injected failures for the next N REST calls (token requests are never affected).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// 503 `SERVER_UNAVAILABLE`.
    Unavailable,
    /// 403 `REQUEST_LIMIT_EXCEEDED`.
    RequestLimit,
    /// 400 `UNABLE_TO_LOCK_ROW`.
    UnableToLock,
    /// Answer only after this long (trips client timeouts); then the call proceeds.
    Timeout(Duration),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Id,
    String,
    Email,
    DateTime,
    Double,
    Reference(&'static str),
}

struct FieldDef {
    name: &'static str,
    kind: Kind,
    required: bool,
    external_id: bool,
}

const fn f(name: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        kind,
        required: false,
        external_id: false,
    }
}
const fn req(name: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        kind,
        required: true,
        external_id: false,
    }
}
const fn ext(name: &'static str) -> FieldDef {
    FieldDef {
        name,
        kind: Kind::String,
        required: false,
        external_id: true,
    }
}

struct ObjectDef {
    name: &'static str,
    prefix: &'static str,
    fields: &'static [FieldDef],
}

static SYSTEM: [FieldDef; 3] = [
    f("Id", Kind::Id),
    f("CreatedDate", Kind::DateTime),
    f("LastModifiedDate", Kind::DateTime),
];

static OBJECTS: &[ObjectDef] = &[
    ObjectDef {
        name: "Account",
        prefix: "001",
        fields: &[
            req("Name", Kind::String),
            f("Type", Kind::String),
            f("Industry", Kind::String),
            f("Description", Kind::String),
        ],
    },
    ObjectDef {
        name: "Contact",
        prefix: "003",
        fields: &[
            f("FirstName", Kind::String),
            req("LastName", Kind::String),
            f("Email", Kind::Email),
            f("Title", Kind::String),
            f("Phone", Kind::String),
            f("Department", Kind::String),
            f("AccountId", Kind::Reference("Account")),
            ext("SkillSync_User_Id__c"),
        ],
    },
    ObjectDef {
        name: "SkillSync_Enrollment__c",
        prefix: "a01",
        fields: &[
            ext("SkillSync_Enrollment_Id__c"),
            req("Contact__c", Kind::Reference("Contact")),
            f("Course_Id__c", Kind::String),
            f("Course_Name__c", Kind::String),
            f("Status__c", Kind::String),
            f("Enrolled_At__c", Kind::DateTime),
            f("Completed_At__c", Kind::DateTime),
            f("Score__c", Kind::Double),
        ],
    },
    ObjectDef {
        name: "SkillSync_Certification__c",
        prefix: "a02",
        fields: &[
            ext("SkillSync_Certification_Id__c"),
            req("Contact__c", Kind::Reference("Contact")),
            f("Name__c", Kind::String),
            f("Issued_At__c", Kind::DateTime),
            f("Expires_At__c", Kind::DateTime),
            f("Status__c", Kind::String),
        ],
    },
];

fn object(name: &str) -> Result<&'static ObjectDef, SfError> {
    OBJECTS
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| err(404, "NOT_FOUND", &format!("The requested resource does not exist: sObject type '{name}' is not supported."), &[]))
}

impl ObjectDef {
    /// A field by name, case-insensitively (as Salesforce resolves names).
    fn field(&self, name: &str) -> Option<&'static FieldDef> {
        SYSTEM
            .iter()
            .chain(self.fields.iter())
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

fn err(status: u16, code: &str, message: &str, fields: &[&str]) -> SfError {
    SfError::from_errors(
        status,
        vec![ApiError {
            message: message.to_string(),
            error_code: code.to_string(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
        }],
    )
}

/// Salesforce's 3-character case-safe suffix of a 15-character id.
fn id_suffix(id15: &str) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk.iter().enumerate().fold(0usize, |acc, (i, c)| {
                if c.is_ascii_uppercase() {
                    acc | (1 << i)
                } else {
                    acc
                }
            });
            ALPHA[bits] as char
        })
        .collect()
}

/// 15- or 18-character id → the canonical 18-character one.
fn canonical_id(id: &str) -> Option<String> {
    match id.len() {
        18 if id.is_ascii() && id_suffix(&id[..15]).eq_ignore_ascii_case(&id[15..]) => {
            Some(format!("{}{}", &id[..15], id_suffix(&id[..15])))
        }
        15 if id.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(format!("{id}{}", id_suffix(id)))
        }
        _ => None,
    }
}

#[derive(Default)]
struct OrgState {
    records: BTreeMap<&'static str, BTreeMap<String, Record>>,
    seq: u64,
    tokens: HashSet<String>,
    fault: Option<(u32, Fault)>,
    latency: Duration,
    api_limit: u64,
    api_used: u64,
    /// Answer upsert-updates like API versions before 46.0: 204, no body.
    legacy_upsert: bool,
    /// The UTC day `api_used` counts (Salesforce's limit is per 24 hours).
    api_day: Option<chrono::NaiveDate>,
    page_size: usize,
    locators: HashMap<String, (Vec<Record>, usize)>,
    counts: BTreeMap<String, u64>,
    /// Public keys (PEM) of connected apps allowed to use the JWT bearer flow.
    jwt_keys: Vec<Vec<u8>>,
}

/// The sandbox org. Clones share state.
#[derive(Clone)]
pub struct Org {
    state: Arc<Mutex<OrgState>>,
}

impl Default for Org {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> Value {
    json!(Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
}

impl OrgState {
    fn new_id(&mut self, o: &ObjectDef) -> String {
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

    fn table(&mut self, o: &ObjectDef) -> &mut BTreeMap<String, Record> {
        self.records.entry(o.name).or_default()
    }

    fn find(&self, o: &ObjectDef, id: &str) -> Option<&Record> {
        self.records.get(o.name)?.get(&canonical_id(id)?)
    }

    /// Check and normalise the fields of a write (`creating`: required fields apply).
    fn validate(
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
            if matches!(def.name, "Id" | "CreatedDate" | "LastModifiedDate") {
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
                let dup = self
                    .records
                    .get(o.name)
                    .into_iter()
                    .flatten()
                    .find(|(id, r)| Some(id.as_str()) != except && r.get(def.name) == Some(&v));
                if let Some((id, _)) = dup {
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

    fn create(&mut self, sobject: &str, fields: &Record) -> Result<String, SfError> {
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
        self.table(o).insert(id.clone(), rec);
        Ok(id)
    }

    fn update(&mut self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError> {
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
        let rec = self.table(o).get_mut(&key).expect("checked");
        for (k, v) in clean {
            rec.insert(k, v);
        }
        rec.insert("LastModifiedDate".into(), now());
        Ok(())
    }

    fn delete(&mut self, sobject: &str, id: &str) -> Result<(), SfError> {
        let o = object(sobject)?;
        let key = canonical_id(id)
            .ok_or_else(|| err(400, "MALFORMED_ID", &format!("malformed id {id}"), &[]))?;
        match self.table(o).remove(&key) {
            Some(_) => Ok(()),
            None => Err(err(404, "ENTITY_IS_DELETED", "entity is deleted", &[])),
        }
    }

    fn by_external(
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
        let ids = self
            .records
            .get(o.name)
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.get(def.name).and_then(Value::as_str) == Some(value))
            .map(|(id, _)| id.clone())
            .collect();
        Ok((def, ids))
    }

    fn upsert(
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
    fn query(&self, soql: &str) -> Result<(Vec<Record>, usize), SfError> {
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

fn sort_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- SOQL subset

struct SoqlQuery {
    /// `SELECT COUNT() FROM …`: only `totalSize` is answered.
    count: bool,
    fields: Vec<String>,
    from: String,
    filter: Option<Cond>,
    order: Option<(String, bool)>,
    limit: Option<usize>,
}

enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp(String, &'static str, Value),
    In(String, Vec<Value>, bool),
    Like(String, String),
}

fn check_fields(c: &Cond, o: &ObjectDef) -> Result<(), SfError> {
    match c {
        Cond::And(v) | Cond::Or(v) => v.iter().try_for_each(|c| check_fields(c, o)),
        Cond::Not(c) => check_fields(c, o),
        Cond::Cmp(f, ..) | Cond::In(f, ..) | Cond::Like(f, _) => {
            o.field(f).map(|_| ()).ok_or_else(|| {
                err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on entity '{}'", o.name),
                    &[],
                )
            })
        }
    }
}

fn get_ci<'r>(r: &'r Record, field: &str) -> &'r Value {
    r.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

/// SOQL equality: strings compare case-insensitively; ids by their 15-char prefix.
fn soql_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x.eq_ignore_ascii_case(y)
                || (x.len() == 18 && y.len() == 15 && x.starts_with(y.as_str()))
                // Unicode case folding without allocating (queries scan every record).
                || (!x.is_ascii() || !y.is_ascii())
                    && x.chars()
                        .flat_map(char::to_lowercase)
                        .eq(y.chars().flat_map(char::to_lowercase))
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Null, Value::Null) => true,
        (x, y) => x == y,
    }
}

impl Cond {
    fn eval(&self, r: &Record) -> bool {
        match self {
            Cond::And(v) => v.iter().all(|c| c.eval(r)),
            Cond::Or(v) => v.iter().any(|c| c.eval(r)),
            Cond::Not(c) => !c.eval(r),
            Cond::Cmp(f, op, lit) => {
                let v = get_ci(r, f);
                match *op {
                    "=" => soql_eq(v, lit),
                    "!=" => !soql_eq(v, lit),
                    _ => {
                        if v.is_null() || lit.is_null() {
                            return false;
                        }
                        let ord = match (v, lit) {
                            (Value::Number(a), Value::Number(b)) => {
                                a.as_f64().partial_cmp(&b.as_f64())
                            }
                            _ => Some(sort_key(v).cmp(&sort_key(lit))),
                        };
                        matches!(
                            (*op, ord),
                            ("<", Some(std::cmp::Ordering::Less))
                                | (">", Some(std::cmp::Ordering::Greater))
                                | (
                                    "<=",
                                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                                )
                                | (
                                    ">=",
                                    Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                                )
                        )
                    }
                }
            }
            Cond::In(f, list, negated) => {
                let v = get_ci(r, f);
                list.iter().any(|l| soql_eq(v, l)) != *negated
            }
            Cond::Like(f, p) => get_ci(r, f).as_str().is_some_and(|v| like_matches(v, p)),
        }
    }
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw} at token {}", self.pos))
        }
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        let yes = matches!(self.toks.get(self.pos), Some(Token::Punct(x)) if *x == p);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn word(&mut self) -> Result<String, String> {
        match self.toks.get(self.pos) {
            Some(Token::Word(w)) => {
                self.pos += 1;
                Ok(w.clone())
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }
    fn literal(&mut self) -> Result<Value, String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Token::Str(s)) => Ok(Value::String(s)),
            Some(Token::Number(n)) => Ok(json!(n)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Ok(Value::Null),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            other => Err(format!("expected a literal, found {other:?}")),
        }
    }
    fn or(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.and()?];
        while self.eat_kw("OR") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Cond::Or(v)
        })
    }
    fn and(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.unary()?];
        while self.eat_kw("AND") {
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Cond::And(v)
        })
    }
    fn unary(&mut self) -> Result<Cond, String> {
        if self.eat_kw("NOT") {
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.eat_punct("(") {
            let c = self.or()?;
            if !self.eat_punct(")") {
                return Err("expected )".into());
            }
            return Ok(c);
        }
        let field = self.word()?;
        if self.eat_kw("LIKE") {
            let t = self.toks.get(self.pos).cloned();
            self.pos += 1;
            return match t {
                Some(Token::Pattern(p)) => Ok(Cond::Like(field, p)),
                _ => Err("LIKE needs a string".into()),
            };
        }
        let negated = if self.peek_kw("NOT") {
            self.pos += 1;
            true
        } else {
            false
        };
        if self.eat_kw("IN") {
            if !self.eat_punct("(") {
                return Err("expected ( after IN".into());
            }
            let mut list = vec![self.literal()?];
            while self.eat_punct(",") {
                list.push(self.literal()?);
            }
            if !self.eat_punct(")") {
                return Err("expected ) after IN list".into());
            }
            return Ok(Cond::In(field, list, negated));
        }
        if negated {
            return Err("expected IN after NOT".into());
        }
        for op in ["=", "!=", "<=", ">=", "<", ">"] {
            if self.eat_punct(op) {
                return Ok(Cond::Cmp(field, op, self.literal()?));
            }
        }
        Err(format!("expected an operator after {field}"))
    }
}

fn parse_query(soql: &str) -> Result<SoqlQuery, String> {
    let toks = Lexer::new(soql).tokens()?;
    let mut p = Parser { toks, pos: 0 };
    p.expect_kw("SELECT")?;
    let count = p.peek_kw("COUNT")
        && matches!(p.toks.get(p.pos + 1), Some(Token::Punct("(")))
        && matches!(p.toks.get(p.pos + 2), Some(Token::Punct(")")));
    let mut fields = Vec::new();
    if count {
        p.pos += 3;
    } else {
        fields.push(p.word()?);
        while p.eat_punct(",") {
            fields.push(p.word()?);
        }
    }
    p.expect_kw("FROM")?;
    let from = p.word()?;
    let filter = if p.eat_kw("WHERE") {
        Some(p.or()?)
    } else {
        None
    };
    let order = if p.eat_kw("ORDER") {
        p.expect_kw("BY")?;
        let f = p.word()?;
        let desc = p.eat_kw("DESC");
        if !desc {
            p.eat_kw("ASC");
        }
        Some((f, desc))
    } else {
        None
    };
    let limit = if p.eat_kw("LIMIT") {
        match p.literal()? {
            Value::Number(n) => Some(n.as_f64().unwrap_or(0.0) as usize),
            _ => return Err("LIMIT needs a number".into()),
        }
    } else {
        None
    };
    if p.pos != p.toks.len() {
        return Err(format!("unexpected token {:?}", p.toks[p.pos]));
    }
    Ok(SoqlQuery {
        count,
        fields,
        from,
        filter,
        order,
        limit,
    })
}

// ---------------------------------------------------------------- public API

impl Org {
    pub const CLIENT_ID: &'static str = "sandbox-client";
    pub const CLIENT_SECRET: &'static str = "sandbox-secret";

    pub fn new() -> Org {
        Org {
            state: Arc::new(Mutex::new(OrgState {
                api_limit: 15_000,
                page_size: 2_000,
                ..Default::default()
            })),
        }
    }

    /// Seed a record (validated like a create). Not counted as an API call.
    pub fn insert(&self, sobject: &str, fields: Record) -> Result<String, SfError> {
        self.state.lock().unwrap().create(sobject, &fields)
    }

    /// Seed a record bypassing validation and uniqueness (to create the states only a
    /// misconfigured org has, e.g. two Contacts with the same external id).
    pub fn insert_unchecked(&self, sobject: &str, mut fields: Record) -> String {
        let mut s = self.state.lock().unwrap();
        let o = object(sobject).expect("known sObject");
        let id = s.new_id(o);
        fields.insert("Id".into(), json!(id));
        s.table(o).insert(id.clone(), fields);
        id
    }

    /// Every record of `sobject`, ordered by id.
    pub fn records(&self, sobject: &str) -> Vec<Record> {
        let s = self.state.lock().unwrap();
        object(sobject)
            .ok()
            .and_then(|o| s.records.get(o.name))
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn record(&self, sobject: &str, id: &str) -> Option<Record> {
        let s = self.state.lock().unwrap();
        s.find(object(sobject).ok()?, id).cloned()
    }

    /// Delete as an admin would (not counted).
    pub fn remove(&self, sobject: &str, id: &str) -> bool {
        self.state.lock().unwrap().delete(sobject, id).is_ok()
    }

    /// REST calls served per endpoint, sorted, named like [`crate::salesforce::Client::calls`]
    /// (`"GET query"`, `"PATCH sobjects/Contact/SkillSync_User_Id__c"`, `"GET sobjects/Contact/{id}"`).
    pub fn requests_by_endpoint(&self) -> Vec<(String, u64)> {
        self.state
            .lock()
            .unwrap()
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// REST calls served (token requests excluded).
    pub fn total_requests(&self) -> u64 {
        self.state.lock().unwrap().counts.values().sum()
    }

    pub fn reset_counts(&self) {
        self.state.lock().unwrap().counts.clear();
    }

    /// The next `n` REST calls fail with `fault` (`n = 0` clears).
    pub fn fail_next(&self, n: u32, fault: Fault) {
        self.state.lock().unwrap().fault = (n > 0).then_some((n, fault));
    }

    /// Answer an upsert that updates with `204 No Content` and no body, as API versions
    /// before 46.0 do.
    pub fn set_legacy_upsert(&self, on: bool) {
        self.state.lock().unwrap().legacy_upsert = on;
    }

    /// Allow the JWT bearer flow for assertions signed by this RSA public key (PEM).
    pub fn trust_jwt_key(&self, public_pem: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .jwt_keys
            .push(public_pem.to_vec());
    }

    /// Invalidate every issued token (the next call gets 401 `INVALID_SESSION_ID`).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// The `M` of `Sforce-Limit-Info: api-usage=N/M`.
    pub fn set_api_limit(&self, max: u64) {
        self.state.lock().unwrap().api_limit = max;
    }

    /// Records per query page (then `nextRecordsUrl`).
    pub fn set_page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n.max(1);
    }

    /// Count a call, apply latency, take a due fault.
    async fn enter(&self, endpoint: String) -> Result<(), SfError> {
        let (latency, fault) = {
            let mut s = self.state.lock().unwrap();
            *s.counts.entry(endpoint).or_default() += 1;
            let today = Utc::now().date_naive();
            if s.api_day != Some(today) {
                s.api_day = Some(today);
                s.api_used = 0;
            }
            s.api_used += 1;
            let fault = super::take_fault(&mut s.fault);
            (s.latency, fault)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault {
            None => Ok(()),
            Some(Fault::Timeout(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Fault::Unavailable) => Err(err(
                503,
                "SERVER_UNAVAILABLE",
                "Server temporarily unavailable (injected)",
                &[],
            )),
            Some(Fault::RequestLimit) => Err(err(
                403,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded. (injected)",
                &[],
            )),
            Some(Fault::UnableToLock) => Err(err(
                400,
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record (injected)",
                &[],
            )),
        }
    }

    fn limit_info(&self) -> String {
        let s = self.state.lock().unwrap();
        format!("api-usage={}/{}", s.api_used, s.api_limit)
    }

    /// A Collections call in-process: one counted call per 200 items.
    async fn chunked<T>(
        &self,
        endpoint: &str,
        items: &[T],
        all_or_none: bool,
        op: impl Fn(&mut OrgState, &T) -> Result<SaveResult, SfError> + Copy,
    ) -> Result<Vec<SaveResult>, SfError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(200) {
            self.enter(endpoint.to_string()).await?;
            out.extend(self.collection(all_or_none, chunk, op)?);
        }
        Ok(out)
    }

    fn collection<T>(
        &self,
        all_or_none: bool,
        items: &[T],
        mut op: impl FnMut(&mut OrgState, &T) -> Result<SaveResult, SfError>,
    ) -> Result<Vec<SaveResult>, SfError> {
        if items.len() > 200 {
            return Err(err(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
                &[],
            ));
        }
        let mut s = self.state.lock().unwrap();
        let snapshot = all_or_none.then(|| s.records.clone());
        let mut results = Vec::with_capacity(items.len());
        let mut failed = false;
        for item in items {
            match op(&mut s, item) {
                Ok(r) => results.push(r),
                Err(e) => {
                    failed = true;
                    results.push(SaveResult {
                        id: None,
                        success: false,
                        errors: errors_of(&e),
                        created: None,
                    });
                }
            }
        }
        if failed {
            if let Some(snap) = snapshot {
                s.records = snap;
                for r in results.iter_mut().filter(|r| r.success) {
                    *r = SaveResult {
                        id: None,
                        success: false,
                        errors: vec![ApiError { message: "Record rolled back because not all records were valid and the request was using AllOrNone header".into(), error_code: "ALL_OR_NONE_OPERATION_ROLLED_BACK".into(), fields: vec![] }],
                        created: None,
                    };
                }
            }
        }
        Ok(results)
    }
}

fn errors_of(e: &SfError) -> Vec<ApiError> {
    match e {
        SfError::Permanent { errors, .. } => errors.clone(),
        SfError::Transient { code, message, .. } => vec![ApiError {
            message: message.clone(),
            error_code: code.clone(),
            fields: vec![],
        }],
        SfError::NotFound => vec![ApiError {
            message: "entity is deleted".into(),
            error_code: "ENTITY_IS_DELETED".into(),
            fields: vec![],
        }],
        SfError::MultipleMatches { ids } => vec![ApiError {
            message: format!("multiple records match: {ids:?}"),
            error_code: "DUPLICATE_EXTERNAL_ID".into(),
            fields: vec![],
        }],
    }
}

fn record_type(r: &Record) -> Option<&str> {
    r.get("attributes")?.get("type")?.as_str()
}

fn ok_result(id: String, created: Option<bool>) -> SaveResult {
    SaveResult {
        id: Some(id),
        success: true,
        errors: vec![],
        created,
    }
}

/// The in-process port: same semantics, same counters and faults as over HTTP.
#[async_trait]
impl SalesforceApi for Org {
    /// Counts one call per page (`set_page_size`), as `nextRecordsUrl` paging does.
    async fn query(&self, soql: &str) -> Result<Vec<Record>, SfError> {
        self.enter("GET query".into()).await?;
        let (rows, page_size) = {
            let s = self.state.lock().unwrap();
            (s.query(soql)?.0, s.page_size)
        };
        for _ in 1..rows.len().div_ceil(page_size) {
            self.enter("GET query".into()).await?;
        }
        Ok(rows)
    }
    async fn create(&self, sobject: &str, fields: &Record) -> Result<String, SfError> {
        self.enter(format!("POST sobjects/{sobject}")).await?;
        self.state.lock().unwrap().create(sobject, fields)
    }
    async fn get(&self, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError> {
        self.enter(format!("GET sobjects/{sobject}/{{id}}")).await?;
        get_record(&self.state.lock().unwrap(), sobject, id, fields)
    }
    async fn update(&self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError> {
        self.enter(format!("PATCH sobjects/{sobject}/{{id}}"))
            .await?;
        self.state.lock().unwrap().update(sobject, id, fields)
    }
    async fn delete(&self, sobject: &str, id: &str) -> Result<(), SfError> {
        self.enter(format!("DELETE sobjects/{sobject}/{{id}}"))
            .await?;
        self.state.lock().unwrap().delete(sobject, id)
    }
    async fn upsert(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError> {
        self.enter(format!("PATCH sobjects/{sobject}/{ext_field}"))
            .await?;
        self.state
            .lock()
            .unwrap()
            .upsert(sobject, ext_field, ext_id, fields)
    }
    async fn delete_by_external_id(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
    ) -> Result<(), SfError> {
        self.enter(format!("DELETE sobjects/{sobject}/{ext_field}"))
            .await?;
        delete_external(&mut self.state.lock().unwrap(), sobject, ext_field, ext_id)
    }
    async fn create_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked(
            "POST composite/sobjects",
            records,
            all_or_none,
            collection_create,
        )
        .await
    }
    async fn update_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked(
            "PATCH composite/sobjects",
            records,
            all_or_none,
            collection_update,
        )
        .await
    }
    async fn upsert_many(
        &self,
        sobject: &str,
        ext_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let endpoint = format!("PATCH composite/sobjects/{sobject}/{ext_field}");
        self.chunked(&endpoint, records, all_or_none, |s, r| {
            upsert_one(s, sobject, ext_field, r)
        })
        .await
    }
    async fn delete_many(
        &self,
        ids: &[String],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked("DELETE composite/sobjects", ids, all_or_none, |s, id| {
            delete_any(s, id).map(|()| ok_result(id.clone(), None))
        })
        .await
    }
    async fn describe(&self, sobject: &str) -> Result<Describe, SfError> {
        self.enter(format!("GET sobjects/{sobject}/describe"))
            .await?;
        describe(sobject)
    }
}

/// One record of a Collections create (`attributes.type` names the sObject).
fn collection_create(s: &mut OrgState, r: &Record) -> Result<SaveResult, SfError> {
    let t = record_type(r)
        .ok_or_else(|| err(400, "INVALID_TYPE", "attributes.type is required", &[]))?;
    s.create(t, r).map(|id| ok_result(id, Some(true)))
}

/// One record of a Collections update (`Id` and `attributes.type` required).
fn collection_update(s: &mut OrgState, r: &Record) -> Result<SaveResult, SfError> {
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

fn upsert_collection(
    org: &Org,
    sobject: &str,
    ext_field: &str,
    chunk: &[Record],
    all_or_none: bool,
) -> Result<Vec<SaveResult>, SfError> {
    org.collection(all_or_none, chunk, |s, r| {
        upsert_one(s, sobject, ext_field, r)
    })
}

/// One record of a Collections upsert: the external id comes from the record.
fn upsert_one(
    s: &mut OrgState,
    sobject: &str,
    ext_field: &str,
    r: &Record,
) -> Result<SaveResult, SfError> {
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

fn delete_any(s: &mut OrgState, id: &str) -> Result<(), SfError> {
    let o = OBJECTS
        .iter()
        .find(|o| id.starts_with(o.prefix))
        .ok_or_else(|| err(400, "MALFORMED_ID", &format!("malformed id {id}"), &[]))?;
    s.delete(o.name, id)
}

fn delete_external(
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

fn get_record(s: &OrgState, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError> {
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

fn describe(sobject: &str) -> Result<Describe, SfError> {
    let o = object(sobject)?;
    Ok(Describe {
        name: o.name.to_string(),
        fields: SYSTEM
            .iter()
            .chain(o.fields.iter())
            .map(|d| FieldDescribe {
                name: d.name.to_string(),
                field_type: match d.kind {
                    Kind::Id => "id",
                    Kind::String => "string",
                    Kind::Email => "email",
                    Kind::DateTime => "datetime",
                    Kind::Double => "double",
                    Kind::Reference(_) => "reference",
                }
                .to_string(),
                external_id: d.external_id,
                unique: d.external_id,
                nillable: !d.required && d.kind != Kind::Id,
            })
            .collect(),
    })
}

// ---------------------------------------------------------------- HTTP

/// The JSON error response Salesforce sends for `e`.
fn error_response(e: &SfError) -> Response {
    let (status, body) = match e {
        SfError::Permanent { status, errors } => (*status, json!(errors)),
        SfError::Transient {
            status,
            code,
            message,
        } => (
            status.unwrap_or(503),
            json!([{"message": message, "errorCode": code, "fields": []}]),
        ),
        SfError::NotFound => (
            404,
            json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND", "fields": []}]),
        ),
        SfError::MultipleMatches { ids } => (
            300,
            json!(ids
                .iter()
                .map(|id| format!("/services/data/v61.0/sobjects/{id}"))
                .collect::<Vec<_>>()),
        ),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn reply<T: serde::Serialize>(r: Result<T, SfError>, status: StatusCode) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    password: Option<String>,
    assertion: Option<String>,
}

/// The JWT bearer flow: an RS256 assertion from the sandbox's connected app
/// (`iss` = [`Org::CLIENT_ID`]), signed by a registered key, not expired.
fn jwt_ok(org: &Org, assertion: Option<&str>) -> bool {
    let Some(jwt) = assertion else { return false };
    let keys = org.state.lock().unwrap().jwt_keys.clone();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&[Org::CLIENT_ID]);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    keys.iter().any(|pem| {
        jsonwebtoken::DecodingKey::from_rsa_pem(pem)
            .ok()
            .is_some_and(|k| jsonwebtoken::decode::<Value>(jwt, &k, &v).is_ok())
    })
}

async fn h_token(State(org): State<Org>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let ok = match f.grant_type.as_str() {
        "client_credentials" => {
            f.client_id.as_deref() == Some(Org::CLIENT_ID)
                && f.client_secret.as_deref() == Some(Org::CLIENT_SECRET)
        }
        "password" => f.password.as_deref() == Some(Org::CLIENT_SECRET),
        crate::salesforce::client::JWT_GRANT => {
            if !jwt_ok(&org, f.assertion.as_deref()) {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        json!({"error": "invalid_grant", "error_description": "invalid assertion"}),
                    ),
                )
                    .into_response();
            }
            true
        }
        _ => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}))).into_response();
        }
    };
    if !ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_client", "error_description": "invalid client credentials"}))).into_response();
    }
    let token = format!("00D5g000000SBOX!{}", uuid::Uuid::new_v4().simple());
    org.state.lock().unwrap().tokens.insert(token.clone());
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({
        "access_token": token,
        "instance_url": format!("http://{host}"),
        "id": format!("http://{host}/id/00D5g000000SBOX/0055g000000SBOX"),
        "token_type": "Bearer",
        "issued_at": Utc::now().timestamp_millis().to_string(),
        "signature": "c2FuZGJveA==",
    }))
    .into_response()
}

/// Bearer check, call counting, latency and faults; `Sforce-Limit-Info` on every answer.
async fn rest_gate(State(org): State<Org>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(String::from);
    if !token.is_some_and(|t| org.state.lock().unwrap().tokens.contains(&t)) {
        return (StatusCode::UNAUTHORIZED, Json(json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]))).into_response();
    }
    let endpoint = endpoint_name(req.method(), req.uri().path());
    let mut resp = match org.enter(endpoint).await {
        Err(e) => error_response(&e),
        Ok(()) => next.run(req).await,
    };
    if let Ok(v) = HeaderValue::from_str(&org.limit_info()) {
        resp.headers_mut().insert("Sforce-Limit-Info", v);
    }
    resp
}

/// `"PATCH sobjects/Contact/SkillSync_User_Id__c"` etc.: method + path template, no ids.
pub fn endpoint_name(method: &Method, path: &str) -> String {
    let rest = path.trim_end_matches('/');
    let rest = rest
        .split_once("/services/data/")
        .map(|(_, r)| r)
        .unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').skip(1).collect(); // drop vXX.X
    let tpl = match parts.as_slice() {
        ["query", ..] => "query".to_string(),
        ["sobjects", t, "describe"] => format!("sobjects/{t}/describe"),
        ["sobjects", t] => format!("sobjects/{t}"),
        ["sobjects", t, id] if canonical_id(id).is_some() => format!("sobjects/{t}/{{id}}"),
        ["sobjects", t, field] => format!("sobjects/{t}/{field}"),
        ["sobjects", t, field, _] => format!("sobjects/{t}/{field}"),
        ["composite", "sobjects"] => "composite/sobjects".to_string(),
        ["composite", "sobjects", t, f] => format!("composite/sobjects/{t}/{f}"),
        [] => "resources".to_string(),
        other => other.join("/"),
    };
    format!("{method} {tpl}")
}

#[derive(Deserialize)]
struct QueryParams {
    q: Option<String>,
}

fn query_page(org: &Org, mut rows: Vec<Record>, total: usize) -> Response {
    let mut s = org.state.lock().unwrap();
    let size = s.page_size;
    let rest = if rows.len() > size {
        rows.split_off(size)
    } else {
        Vec::new()
    };
    let mut body = json!({"totalSize": total, "done": rest.is_empty(), "records": rows});
    if !rest.is_empty() {
        let loc = format!(
            "01gSBOX{}-{}",
            uuid::Uuid::new_v4().simple(),
            total - rest.len()
        );
        body["nextRecordsUrl"] = json!(format!("/services/data/v61.0/query/{loc}"));
        s.locators.insert(loc, (rest, total));
    }
    Json(body).into_response()
}

async fn h_query(State(org): State<Org>, Query(p): Query<QueryParams>) -> Response {
    let Some(q) = p.q else {
        return error_response(&err(400, "MALFORMED_QUERY", "q is required", &[]));
    };
    let rows = org.state.lock().unwrap().query(&q);
    match rows {
        Ok((rows, total)) => query_page(&org, rows, total),
        Err(e) => error_response(&e),
    }
}

async fn h_query_more(State(org): State<Org>, Path((_v, loc)): Path<(String, String)>) -> Response {
    let taken = org.state.lock().unwrap().locators.remove(&loc);
    match taken {
        Some((rows, total)) => query_page(&org, rows, total),
        None => error_response(&err(
            400,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
            &[],
        )),
    }
}

fn body_record(body: &Bytes) -> Result<Record, SfError> {
    serde_json::from_slice::<Record>(body).map_err(|e| {
        err(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected JSON: {e}"),
            &[],
        )
    })
}

async fn h_create(
    State(org): State<Org>,
    Path((_v, t)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let r = body_record(&body).and_then(|rec| org.state.lock().unwrap().create(&t, &rec));
    reply(
        r.map(|id| json!({"id": id, "success": true, "errors": []})),
        StatusCode::CREATED,
    )
}

async fn h_describe(Path((_v, t)): Path<(String, String)>) -> Response {
    reply(describe(&t), StatusCode::OK)
}

#[derive(Deserialize)]
struct FieldsParam {
    fields: Option<String>,
}

/// `/sobjects/{T}/{id}` (GET, PATCH, DELETE).
async fn h_record(
    State(org): State<Org>,
    method: Method,
    Path((_v, t, id)): Path<(String, String, String)>,
    Query(fp): Query<FieldsParam>,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let fields: Vec<String> = fp
                .fields
                .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default();
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            reply(
                get_record(&org.state.lock().unwrap(), &t, &id, &refs),
                StatusCode::OK,
            )
        }
        Method::PATCH => match body_record(&body)
            .and_then(|rec| org.state.lock().unwrap().update(&t, &id, &rec))
        {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        Method::DELETE => match org.state.lock().unwrap().delete(&t, &id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// `/sobjects/{T}/{extField}/{extId}` (GET, PATCH = upsert, DELETE).
async fn h_external(
    State(org): State<Org>,
    method: Method,
    Path((_v, t, field, value)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let mut s = org.state.lock().unwrap();
    match method {
        Method::PATCH => {
            match body_record(&body).and_then(|rec| s.upsert(&t, &field, &value, &rec)) {
                Ok(u) if !u.created && s.legacy_upsert => StatusCode::NO_CONTENT.into_response(),
                Ok(u) => {
                    let status = if u.created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (status, Json(json!({"id": u.id, "success": true, "errors": [], "created": u.created}))).into_response()
                }
                Err(SfError::MultipleMatches { ids }) => multiple_choices(&t, &ids),
                Err(e) => error_response(&e),
            }
        }
        Method::DELETE => match delete_external(&mut s, &t, &field, &value) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(SfError::MultipleMatches { ids }) => multiple_choices(&t, &ids),
            Err(e) => error_response(&e),
        },
        Method::GET => {
            let found = object(&t).and_then(|o| s.by_external(o, &field, &value));
            match found {
                Ok((_, ids)) if ids.len() == 1 => {
                    reply(get_record(&s, &t, &ids[0], &[]), StatusCode::OK)
                }
                Ok((_, ids)) if ids.is_empty() => error_response(&SfError::NotFound),
                Ok((_, ids)) => multiple_choices(&t, &ids),
                Err(e) => error_response(&e),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// 300 Multiple Choices: the JSON list of the matching records' URLs.
fn multiple_choices(sobject: &str, ids: &[String]) -> Response {
    let name = object(sobject).map(|o| o.name).unwrap_or(sobject);
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("/services/data/v61.0/sobjects/{name}/{id}"))
        .collect();
    (StatusCode::MULTIPLE_CHOICES, Json(urls)).into_response()
}

#[derive(Deserialize)]
struct CollectionBody {
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct DeleteParams {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

async fn h_collection(
    State(org): State<Org>,
    method: Method,
    Query(dp): Query<DeleteParams>,
    body: Bytes,
) -> Response {
    if method == Method::DELETE {
        let ids: Vec<String> = dp
            .ids
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let r = org.collection(dp.all_or_none.unwrap_or(false), &ids, |s, id| {
            delete_any(s, id).map(|()| ok_result(id.clone(), None))
        });
        return reply(r, StatusCode::OK);
    }
    let b: CollectionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(&err(400, "JSON_PARSER_ERROR", &e.to_string(), &[])),
    };
    let r = match method {
        Method::POST => org.collection(b.all_or_none, &b.records, collection_create),
        Method::PATCH => org.collection(b.all_or_none, &b.records, collection_update),
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    reply(r, StatusCode::OK)
}

async fn h_upsert_collection(
    State(org): State<Org>,
    Path((_v, t, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let b: CollectionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(&err(400, "JSON_PARSER_ERROR", &e.to_string(), &[])),
    };
    reply(
        upsert_collection(&org, &t, &field, &b.records, b.all_or_none),
        StatusCode::OK,
    )
}

/// `GET /services/data/vXX.X/`: the resources of a version.
async fn h_resources(Path(v): Path<String>) -> Response {
    let base = format!("/services/data/{v}");
    Json(json!({
        "sobjects": format!("{base}/sobjects"),
        "query": format!("{base}/query"),
        "composite": format!("{base}/composite"),
        "limits": format!("{base}/limits"),
    }))
    .into_response()
}

async fn h_versions() -> Response {
    Json(json!([{"label": "Winter '25", "url": "/services/data/v61.0", "version": "61.0"}]))
        .into_response()
}

async fn h_sobjects() -> Response {
    let list: Vec<Value> = OBJECTS
        .iter()
        .map(|o| json!({"name": o.name, "keyPrefix": o.prefix, "custom": o.name.ends_with("__c")}))
        .collect();
    Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": list})).into_response()
}

impl Org {
    /// The HTTP face of the org.
    pub fn router(&self) -> Router {
        let base = "/services/data/{v}";
        let record = get(h_record).patch(h_record).delete(h_record);
        let external = get(h_external).patch(h_external).delete(h_external);
        let rest = Router::new()
            .route(base, get(h_resources))
            .route(&format!("{base}/"), get(h_resources))
            .route(&format!("{base}/query"), get(h_query))
            .route(&format!("{base}/query/"), get(h_query))
            .route(&format!("{base}/query/{{loc}}"), get(h_query_more))
            .route(&format!("{base}/sobjects"), get(h_sobjects))
            .route(&format!("{base}/sobjects/"), get(h_sobjects))
            .route(&format!("{base}/sobjects/{{t}}"), post(h_create))
            .route(&format!("{base}/sobjects/{{t}}/"), post(h_create))
            .route(&format!("{base}/sobjects/{{t}}/describe"), get(h_describe))
            .route(&format!("{base}/sobjects/{{t}}/describe/"), get(h_describe))
            .route(&format!("{base}/sobjects/{{t}}/{{id}}"), record)
            .route(&format!("{base}/sobjects/{{t}}/{{f}}/{{x}}"), external)
            .route(
                &format!("{base}/composite/sobjects"),
                post(h_collection).patch(h_collection).delete(h_collection),
            )
            .route(
                &format!("{base}/composite/sobjects/{{t}}/{{f}}"),
                patch(h_upsert_collection),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                rest_gate,
            ));
        Router::new()
            .route("/services/oauth2/token", post(h_token))
            .route("/services/data", get(h_versions))
            .route("/services/data/", get(h_versions))
            .merge(rest)
            .with_state(self.clone())
    }

    /// Serve over HTTP on `addr` (port 0 picks one); returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let router = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok((bound, handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn ids_are_18_chars_with_a_valid_checksum() {
        let org = Org::new();
        let id = org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("001"));
        assert_eq!(canonical_id(&id[..15]).unwrap(), id);
        assert!(
            org.record("Account", &id[..15]).is_some(),
            "15-char ids resolve"
        );
        // The documented example: 001A0000006Vm9r → IAC
        assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
    }

    #[tokio::test]
    async fn validation_and_soql_subset() {
        let org = Org::new();
        let acct = org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
        let e = org
            .insert("Contact", rec(json!({"FirstName": "x"})))
            .unwrap_err();
        assert_eq!(e.code(), "REQUIRED_FIELD_MISSING");
        let e = org
            .insert(
                "Contact",
                rec(json!({"LastName": "x", "AccountId": "001000000000000AAA"})),
            )
            .unwrap_err();
        assert_eq!(e.code(), "INVALID_CROSS_REFERENCE_KEY");
        let e = org
            .insert("Contact", rec(json!({"LastName": "x", "Bogus__c": 1})))
            .unwrap_err();
        assert_eq!(e.code(), "INVALID_FIELD");
        org.insert("Contact", rec(json!({"LastName": "A", "Email": "Ada@X.example", "AccountId": acct, "SkillSync_User_Id__c": "L1"}))).unwrap();
        org.insert(
            "Contact",
            rec(json!({"LastName": "B", "Email": "b@x.example"})),
        )
        .unwrap();
        let e = org
            .insert(
                "Contact",
                rec(json!({"LastName": "C", "SkillSync_User_Id__c": "L1"})),
            )
            .unwrap_err();
        assert_eq!(e.code(), "DUPLICATE_VALUE");
        let q = |s: &str| org.state.lock().unwrap().query(s).map(|(rows, _)| rows);
        let count = |s: &str| org.state.lock().unwrap().query(s).unwrap().1;
        assert_eq!(
            q("SELECT Id, LastName FROM Contact WHERE Email = 'ada@x.example'")
                .unwrap()
                .len(),
            1,
            "case-insensitive"
        );
        assert_eq!(q("SELECT Id FROM Contact WHERE Email = 'nobody' OR SkillSync_User_Id__c = 'L1' LIMIT 10").unwrap().len(), 1);
        assert_eq!(
            q("SELECT Id FROM Contact WHERE LastName IN ('A', 'B') AND NOT Email = 'b@x.example'")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            q("SELECT Id FROM Contact WHERE Email LIKE '%x.example' ORDER BY LastName DESC")
                .unwrap()[0]["Id"],
            q("SELECT Id FROM Contact WHERE LastName = 'B'").unwrap()[0]["Id"]
        );
        assert_eq!(
            q(&format!(
                "SELECT Id FROM Contact WHERE AccountId = '{}'",
                &acct[..15]
            ))
            .unwrap()
            .len(),
            1
        );
        assert_eq!(
            q("SELECT Id FROM Contact WHERE Email = 'x\\' OR Email != \\''")
                .unwrap()
                .len(),
            0,
            "escaped literal stays a literal"
        );
        assert_eq!(count("SELECT COUNT() FROM Contact WHERE Email != null"), 2);
        assert_eq!(
            q("SELECT Id FROM Contact WHERE LastName LIKE '\\_'")
                .unwrap()
                .len(),
            0,
            "escaped wildcard matches itself only"
        );
        assert_eq!(
            q("SELECT Id FROM Contact WHERE (LastName = 'A' OR LastName = 'B') AND Email NOT IN ('b@x.example')")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            q("SELECT Id FROM Contact WHERE").unwrap_err().code(),
            "MALFORMED_QUERY"
        );
        assert_eq!(
            q("SELECT Nope FROM Contact").unwrap_err().code(),
            "INVALID_FIELD"
        );
    }

    #[tokio::test]
    async fn upsert_and_collections_all_or_none() {
        let org = Org::new();
        let u = org
            .upsert(
                "Contact",
                "SkillSync_User_Id__c",
                "L9",
                &rec(json!({"LastName": "N"})),
            )
            .await
            .unwrap();
        assert!(u.created);
        let u2 = org
            .upsert(
                "Contact",
                "SkillSync_User_Id__c",
                "L9",
                &rec(json!({"LastName": "M"})),
            )
            .await
            .unwrap();
        assert_eq!((u2.created, &u2.id), (false, &u.id));
        org.insert_unchecked(
            "Contact",
            rec(json!({"LastName": "dup", "SkillSync_User_Id__c": "L9"})),
        );
        assert!(matches!(
            org.upsert("Contact", "SkillSync_User_Id__c", "L9", &Record::new())
                .await,
            Err(SfError::MultipleMatches { .. })
        ));
        let good = rec(json!({"attributes": {"type": "Contact"}, "LastName": "ok"}));
        let bad = rec(json!({"attributes": {"type": "Contact"}, "FirstName": "no last name"}));
        let res = org
            .create_many(&[good.clone(), bad.clone()], true)
            .await
            .unwrap();
        assert_eq!(
            res[0].errors[0].error_code,
            "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        );
        assert_eq!(res[1].errors[0].error_code, "REQUIRED_FIELD_MISSING");
        assert_eq!(org.records("Contact").len(), 2, "rolled back");
        let res = org.create_many(&[good, bad], false).await.unwrap();
        assert!(res[0].success && !res[1].success);
        assert_eq!(org.records("Contact").len(), 3);
    }

    #[test]
    fn endpoint_names_have_no_ids() {
        assert_eq!(
            endpoint_name(&Method::GET, "/services/data/v61.0/query"),
            "GET query"
        );
        assert_eq!(
            endpoint_name(
                &Method::PATCH,
                "/services/data/v61.0/sobjects/Contact/SkillSync_User_Id__c/L1"
            ),
            "PATCH sobjects/Contact/SkillSync_User_Id__c"
        );
        assert_eq!(
            endpoint_name(
                &Method::PATCH,
                &format!(
                    "/services/data/v61.0/sobjects/Contact/{}",
                    canonical_id("0035g00000ABCDE").unwrap()
                )
            ),
            "PATCH sobjects/Contact/{id}"
        );
    }
}
