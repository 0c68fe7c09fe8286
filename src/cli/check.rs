//! `syncback config check`: the static checks, then (unless `--offline`) the broker, the
//! store, Salesforce (the configured fields, every `sync.field_map` field) and the R2
//! source department in SkillSync. Every line names the key it is about.

use std::process::ExitCode;

use crate::config::{Role, Settings};
use crate::salesforce::SalesforceApi;
use crate::store::{SchemaState, Store};

use super::{exit, stores};

pub async fn config_check(
    settings: Settings,
    role: Role,
    offline: bool,
) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    match settings.validate_for(role) {
        Ok(()) => println!(
            "✓ configuration is valid for `{}`",
            format!("{role:?}").to_lowercase()
        ),
        Err(e) => {
            ok = false;
            println!("✗ {e}");
        }
    }
    for w in settings.warnings() {
        println!("! {w}");
    }
    let works = matches!(role, Role::Work | Role::Run);
    if works && !settings.sync.enabled {
        println!(
            "! sync.enabled = false (R1): events are accepted and recorded as skipped, nothing is written to Salesforce{}",
            if settings.sync.source_department_id.trim().is_empty() {
                "; sync.source_department_id is needed before enabling it (R2)"
            } else {
                ""
            }
        );
    }
    if offline || !ok {
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            exit::failure()
        });
    }
    let mut report = |good: bool, what: String| {
        ok &= good;
        println!("{} {what}", if good { "✓" } else { "✗" });
    };
    match stores::probe_broker(&settings).await {
        Err(e) => report(false, format!("broker: {e}")),
        Ok(()) => match crate::queue::connect(&settings.queue).await {
            Ok(q) => {
                match q.ping().await {
                    Ok(()) => report(
                        true,
                        format!("broker reachable ({:?})", settings.queue.backend),
                    ),
                    Err(e) => report(false, format!("broker ({}): {e}", queue_key(&settings))),
                }
                q.close().await;
            }
            Err(e) => report(false, format!("broker ({}): {e}", queue_key(&settings))),
        },
    }
    if works {
        check_store(&settings, &mut report).await;
        check_salesforce(&settings, &mut report).await;
        check_source(&settings, &mut report).await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        exit::failure()
    })
}

fn queue_key(settings: &Settings) -> &'static str {
    if settings.queue.urls.is_empty() {
        "queue.url"
    } else {
        "queue.urls"
    }
}

/// The store answers; a SQLite file that does not exist yet is not created here (`work`
/// creates it), only its directory is checked.
async fn check_store(settings: &Settings, report: &mut impl FnMut(bool, String)) {
    let url = settings.store.url.expose();
    if let Some(path) = stores::sqlite_path(url) {
        if !path.exists() {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            let writable = std::fs::metadata(&dir).is_ok_and(|m| !m.permissions().readonly());
            report(
                writable,
                if writable {
                    format!(
                        "store: SQLite file {} does not exist yet; `work`/`run` will create it (store.url)",
                        path.display()
                    )
                } else {
                    format!(
                        "store: cannot create the SQLite file {}: its directory {} is missing or read-only (store.url)",
                        path.display(),
                        dir.display()
                    )
                },
            );
            return;
        }
    }
    let s = match stores::connect_read_only(settings).await {
        Ok(s) => s,
        Err(e) => return report(false, format!("store: {e:#}")),
    };
    if let Err(e) = s.ping().await {
        return report(false, format!("store (store.url): {e}"));
    }
    // Tables missing or behind are normal before the first start: `work`/`run` migrate.
    match s.schema_state().await {
        Ok(SchemaState::Current) => report(true, "store reachable (store.url)".into()),
        Ok(SchemaState::Missing) => report(
            true,
            format!(
                "store reachable; {} has no syncback tables yet: `work`/`run` will create them (store.url)",
                stores::describe(url)
            ),
        ),
        Ok(SchemaState::Behind { applied, latest }) => report(
            true,
            format!(
                "store reachable; its schema is at migration {applied} of {latest}: `work`/`run` will bring it up to date (store.url)"
            ),
        ),
        Err(e) => report(false, format!("store (store.url): {e}")),
    }
}

async fn check_salesforce(settings: &Settings, report: &mut impl FnMut(bool, String)) {
    let sf = match crate::salesforce::Client::new(&settings.salesforce) {
        Ok(sf) => sf,
        Err(e) => return report(false, format!("Salesforce (salesforce.*): {e}")),
    };
    let sync = &settings.sync;
    match sf.check_schema(&sync.link_field, &sync.match_field).await {
        Ok(problems) if problems.is_empty() => report(
            true,
            "Salesforce: authenticated; Contact and custom objects have the configured fields (sync.link_field, sync.match_field)".into(),
        ),
        Ok(problems) => {
            for p in problems {
                report(false, format!("Salesforce: {p}"));
            }
        }
        Err(e) => return report(false, format!("Salesforce (salesforce.login_url, salesforce.client_id): {e}")),
    }
    // Every mapped Contact field must exist, or every event dead-letters INVALID_FIELD.
    match sf.describe("Contact").await {
        Ok(d) => {
            let names: Vec<&str> = d.fields.iter().map(|f| f.name.as_str()).collect();
            let mut missing = 0;
            for field in sync.field_map.keys() {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(field)) {
                    missing += 1;
                    let hint = crate::config::did_you_mean(field, &names)
                        .map(|s| format!(" — did you mean `{s}`?"))
                        .unwrap_or_default();
                    report(
                        false,
                        format!(
                            "sync.field_map: Contact.{field} does not exist in Salesforce{hint}"
                        ),
                    );
                }
            }
            if missing == 0 {
                report(
                    true,
                    format!(
                        "Salesforce: every sync.field_map field exists on Contact ({})",
                        sync.field_map
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        Err(e) => report(
            false,
            format!("Salesforce: describe Contact (sync.field_map): {e}"),
        ),
    }
    if let Some(w) = super::budget::data_skew(&sf, sync).await {
        println!("! {w}");
    }
    if sf.api_usage().is_some() {
        println!("  {}", sf.budget().status().usage_line());
    }
}

/// R2, one rule with `work`/`run`: with sync enabled the source department must exist
/// (they refuse to start otherwise); with it disabled nothing is required, and a
/// department that is set is checked for information only.
async fn check_source(settings: &Settings, report: &mut impl FnMut(bool, String)) {
    let dept = settings.sync.source_department_id.trim();
    if !settings.sync.enabled && dept.is_empty() {
        return;
    }
    match crate::worker::validate_source(settings).await {
        Ok(d) => report(
            true,
            format!(
                "SkillSync: source department {} ({}) validated (R2): sync.source_department_id",
                d.id, d.name
            ),
        ),
        Err(e) if settings.sync.enabled => report(
            false,
            format!("SkillSync (sync.source_department_id, skillsync.*): {e}"),
        ),
        Err(e) => println!(
            "! SkillSync (sync.source_department_id): {e} — not required while sync.enabled = false, needed before enabling it (R2)"
        ),
    }
}
