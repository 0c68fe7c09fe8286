//! The mapping in force (docs/rules.md R1–R5, R8) as the Data Mapping page and
//! `syncback mapping show|set` see and change it — one implementation for both.
//!
//! `sync.managed_by = "file"`: the TOML `[sync]` section is the truth, nothing here
//! writes. `"console"`: the store holds versioned mappings (the TOML section seeds
//! version 1); every `work`/`run` process polls the newest version number and publishes a
//! new version through its [`SettingsWatch`] within `admin.mapping_poll_secs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{is_api_name, is_sf_id, AccountRule, ManagedBy, Scope, SyncSettings};
use crate::salesforce::{SalesforceApi, SfError};
use crate::skillsync::SkillSyncApi;
use crate::store::{AuditEntry, Store, StoreError};
use crate::sync::{LearnerAttr, SettingsWatch};

/// The mapping shown to a person.
#[derive(Clone, Debug, Serialize)]
pub struct MappingView {
    pub settings: SyncSettings,
    pub managed_by: ManagedBy,
    /// Stored version (console mode).
    pub version: Option<i64>,
    pub saved_by: Option<String>,
    pub saved_at: Option<DateTime<Utc>>,
}

/// A problem with one field of a proposed mapping (its configuration key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn fe(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("sync.managed_by = \"file\": the [sync] section of the configuration file is the mapping; edit it there (or set sync.managed_by = \"console\")")]
    FileManaged,
    #[error("the mapping was changed by someone else (now version {0}); reload and try again")]
    Conflict(i64),
    #[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The mapping in force for `file` (the `[sync]` section of the configuration). Console
/// mode, first use: seeds version 1 from it.
pub async fn current(store: &dyn Store, file: &SyncSettings) -> Result<MappingView, StoreError> {
    if file.managed_by == ManagedBy::File {
        return Ok(of_file(file));
    }
    let latest = match store.latest_mapping().await? {
        Some(v) => v,
        None => seed(store, file).await?,
    };
    Ok(stored(latest))
}

/// [`current`] without writing (`mapping show` on a read-only store): in console mode
/// with no version saved yet, the `[sync]` section that will become version 1, unversioned.
pub async fn peek(store: &dyn Store, file: &SyncSettings) -> Result<MappingView, StoreError> {
    if file.managed_by == ManagedBy::File {
        return Ok(of_file(file));
    }
    Ok(match store.latest_mapping().await? {
        Some(v) => stored(v),
        None => MappingView {
            managed_by: ManagedBy::Console,
            ..of_file(file)
        },
    })
}

/// The `[sync]` section itself (file mode: the mapping in force; needs no store).
pub fn of_file(file: &SyncSettings) -> MappingView {
    MappingView {
        settings: file.clone(),
        managed_by: ManagedBy::File,
        version: None,
        saved_by: None,
        saved_at: None,
    }
}

fn stored(latest: crate::store::MappingVersion) -> MappingView {
    let mut settings = latest.settings;
    settings.managed_by = ManagedBy::Console;
    MappingView {
        settings,
        managed_by: ManagedBy::Console,
        version: Some(latest.version),
        saved_by: Some(latest.saved_by),
        saved_at: Some(latest.saved_at),
    }
}

/// Console mode, first start: the `[sync]` section becomes version 1.
async fn seed(
    store: &dyn Store,
    file: &SyncSettings,
) -> Result<crate::store::MappingVersion, StoreError> {
    if store
        .save_mapping(file, "configuration file", None)
        .await?
        .is_some()
    {
        info!("mapping version 1 seeded from the [sync] section (sync.managed_by = \"console\")");
    }
    store
        .latest_mapping()
        .await?
        .ok_or_else(|| StoreError::Other("mapping seed vanished".into()))
}

/// Apply `key = value` pairs (form fields or `mapping set` arguments) to `base`.
/// Keys are the configuration keys of `[sync]`.
pub fn apply_pairs(
    base: &SyncSettings,
    pairs: &[(String, String)],
) -> Result<SyncSettings, Vec<FieldError>> {
    let mut s = base.clone();
    let mut errs = Vec::new();
    for (k, v) in pairs {
        let v = v.trim();
        match k.as_str() {
            "enabled" => match v {
                "true" | "on" | "1" | "yes" => s.enabled = true,
                "false" | "off" | "0" | "no" | "" => s.enabled = false,
                _ => errs.push(fe("enabled", format!("{v:?} is not true or false"))),
            },
            "source_department_id" => s.source_department_id = v.to_string(),
            "scope" => match v {
                "department_only" => s.scope = Scope::DepartmentOnly,
                "with_subdepartments" => s.scope = Scope::WithSubdepartments,
                _ => errs.push(fe(
                    "scope",
                    format!("{v:?} is not department_only or with_subdepartments"),
                )),
            },
            "account_rule" => match v {
                "default" => s.account_rule = AccountRule::Default,
                "department" => s.account_rule = AccountRule::Department,
                "learner_field" => s.account_rule = AccountRule::LearnerField,
                _ => errs.push(fe(
                    "account_rule",
                    format!("{v:?} is not default, department or learner_field"),
                )),
            },
            "default_account_id" => s.default_account_id = v.to_string(),
            "account_field" => s.account_field = v.to_string(),
            "match_field" => s.match_field = v.to_string(),
            "field_map" => match parse_field_map(v) {
                Ok(m) => s.field_map = m,
                Err(e) => errs.push(fe("field_map", e)),
            },
            other => errs.push(fe(
                other,
                "not a mapping key (enabled, source_department_id, scope, account_rule, default_account_id, account_field, match_field, field_map)",
            )),
        }
    }
    if errs.is_empty() {
        Ok(s)
    } else {
        Err(errs)
    }
}

/// `FirstName = first_name` lines (or `;`-separated) into the R8 field mapping.
pub fn parse_field_map(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut map = std::collections::BTreeMap::new();
    for part in text.split(['\n', ';']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((f, a)) = part.split_once('=') else {
            return Err(format!("{part:?}: write ContactField = learner_attribute"));
        };
        map.insert(f.trim().to_string(), a.trim().to_string());
    }
    Ok(map)
}

/// The R8 field mapping as the page's textarea shows it.
pub fn field_map_text(s: &SyncSettings) -> String {
    s.field_map
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Check a proposed mapping against SkillSync (R2) and Salesforce (R4, R5, R8).
/// Returns every problem, by configuration key.
pub async fn validate(
    s: &SyncSettings,
    sf: &dyn SalesforceApi,
    ss: &dyn SkillSyncApi,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let dept = s.source_department_id.trim();
    if dept.is_empty() {
        if s.enabled {
            errs.push(fe(
                "source_department_id",
                "required before Inbound Learner Sync can be enabled (R2)",
            ));
        }
    } else {
        match ss.department(dept).await {
            Ok(Some(_)) => {}
            Ok(None) => errs.push(fe(
                "source_department_id",
                format!("SkillSync has no department {dept}"),
            )),
            Err(e) => errs.push(fe(
                "source_department_id",
                format!("could not validate with SkillSync: {e}"),
            )),
        }
    }
    match s.account_rule {
        AccountRule::Default => {
            let id = s.default_account_id.trim();
            if id.is_empty() {
                errs.push(fe(
                    "default_account_id",
                    "choose the Account all Contacts go to (rule A)",
                ));
            } else if !is_sf_id(id) {
                errs.push(fe(
                    "default_account_id",
                    format!("{id:?} is not a 15/18-character Salesforce id"),
                ));
            } else {
                match sf.get("Account", id, &["Id", "Name"]).await {
                    Ok(_) => {}
                    Err(SfError::NotFound) => errs.push(fe(
                        "default_account_id",
                        format!("Salesforce has no Account {id}"),
                    )),
                    Err(e) => errs.push(fe(
                        "default_account_id",
                        format!("could not check the Account in Salesforce: {e}"),
                    )),
                }
            }
        }
        AccountRule::LearnerField => {
            if s.account_field.trim().is_empty() {
                errs.push(fe(
                    "account_field",
                    "name the learner field that holds the Account name (rule C)",
                ));
            }
        }
        AccountRule::Department => {}
    }
    let mut fields_to_check: Vec<(&str, String)> = Vec::new();
    if !is_api_name(&s.match_field) {
        errs.push(fe(
            "match_field",
            format!("{:?} is not a Salesforce field API name", s.match_field),
        ));
    } else {
        fields_to_check.push(("match_field", s.match_field.clone()));
    }
    for (k, v) in &s.field_map {
        if !is_api_name(k) {
            errs.push(fe(
                "field_map",
                format!("{k:?} is not a Salesforce field API name"),
            ));
        } else {
            fields_to_check.push(("field_map", k.clone()));
        }
        if LearnerAttr::parse(v).is_none() {
            errs.push(fe(
                "field_map",
                format!(
                    "{k} = {v}: not one of first_name, last_name, email, username, fields.<key>"
                ),
            ));
        }
    }
    match sf.describe("Contact").await {
        Ok(d) => {
            for (key, f) in fields_to_check {
                if !d.fields.iter().any(|x| x.name.eq_ignore_ascii_case(&f)) {
                    errs.push(fe(key, format!("Contact has no field {f}")));
                }
            }
        }
        Err(e) => errs.push(fe(
            "match_field",
            format!("could not read the Contact fields from Salesforce: {e}"),
        )),
    }
    errs
}

/// Validate and save `next` as a new version based on `prev`, with an audit entry.
pub async fn save(
    store: &dyn Store,
    sf: &dyn SalesforceApi,
    ss: &dyn SkillSyncApi,
    prev: &MappingView,
    mut next: SyncSettings,
    actor: &str,
) -> Result<i64, SaveError> {
    if prev.managed_by == ManagedBy::File {
        return Err(SaveError::FileManaged);
    }
    next.managed_by = ManagedBy::Console;
    let errs = validate(&next, sf, ss).await;
    if !errs.is_empty() {
        return Err(SaveError::Invalid(errs));
    }
    let Some(version) = store.save_mapping(&next, actor, prev.version).await? else {
        let now = store.latest_mapping_version().await?.unwrap_or_default();
        return Err(SaveError::Conflict(now));
    };
    let (before, after) = diff(&prev.settings, &next);
    store
        .add_audit(&AuditEntry {
            at: Utc::now(),
            actor: actor.to_string(),
            action: "mapping.save".into(),
            target: format!("mapping v{version}"),
            before: Some(before),
            after: Some(after),
        })
        .await?;
    info!(version, actor, "mapping saved");
    Ok(version)
}

/// The changed keys, as `key = value` lines before and after.
pub fn diff(a: &SyncSettings, b: &SyncSettings) -> (String, String) {
    let ja = serde_json::to_value(a).unwrap_or_default();
    let jb = serde_json::to_value(b).unwrap_or_default();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    if let (Some(ma), Some(mb)) = (ja.as_object(), jb.as_object()) {
        for (k, vb) in mb {
            let va = ma.get(k).cloned().unwrap_or_default();
            if &va != vb && k != "managed_by" {
                before.push(format!("{k} = {va}"));
                after.push(format!("{k} = {vb}"));
            }
        }
    }
    if before.is_empty() {
        before.push("(no change)".into());
        after.push("(no change)".into());
    }
    (before.join("\n"), after.join("\n"))
}

/// The mapping a `work`/`run` process starts with: the file's, or (console mode) the
/// store's newest version (seeded from the file on first start).
pub async fn for_process(
    store: &dyn Store,
    file: &SyncSettings,
) -> Result<(SyncSettings, Option<i64>), StoreError> {
    let v = current(store, file).await?;
    Ok((v.settings, v.version))
}

/// Console mode: publish each new stored version through `watch` (checked every
/// `every`), until `shutdown`. The returned receiver tells the version in force.
pub fn spawn_poller(
    store: Arc<dyn Store>,
    watch_tx: SettingsWatch,
    start_version: Option<i64>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Option<i64>> {
    let (vtx, vrx) = watch::channel(start_version);
    tokio::spawn(async move {
        let mut seen = start_version;
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            match store.latest_mapping_version().await {
                Ok(v) if v != seen => match store.latest_mapping().await {
                    Ok(Some(m)) => {
                        let mut s = m.settings;
                        s.managed_by = ManagedBy::Console;
                        info!(version = m.version, saved_by = %m.saved_by, "new mapping version in force");
                        watch_tx.publish(s);
                        seen = Some(m.version);
                        let _ = vtx.send(seen);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "reading the new mapping failed; will retry"),
                },
                Ok(_) => {}
                Err(e) => warn!(error = %e, "polling the mapping version failed; will retry"),
            }
        }
    });
    vrx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_apply_by_configuration_key() {
        let base = SyncSettings::default();
        let s = apply_pairs(
            &base,
            &[
                ("enabled".into(), "true".into()),
                ("scope".into(), "department_only".into()),
                ("account_rule".into(), "learner_field".into()),
                ("account_field".into(), "company".into()),
                (
                    "field_map".into(),
                    "FirstName = first_name\nTitle = fields.title".into(),
                ),
            ],
        )
        .unwrap();
        assert!(s.enabled);
        assert_eq!(s.scope, Scope::DepartmentOnly);
        assert_eq!(s.account_rule, AccountRule::LearnerField);
        assert_eq!(s.field_map.get("Title").unwrap(), "fields.title");
        let errs = apply_pairs(
            &base,
            &[("scope".into(), "all".into()), ("bogus".into(), "1".into())],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "scope");
    }

    #[test]
    fn diff_lists_changed_keys_only() {
        let a = SyncSettings::default();
        let mut b = a.clone();
        b.source_department_id = "42".into();
        let (before, after) = diff(&a, &b);
        assert_eq!(before, "source_department_id = \"\"");
        assert_eq!(after, "source_department_id = \"42\"");
    }
}
