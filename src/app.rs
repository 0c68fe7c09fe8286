//! The composition root: builds the Salesforce and SkillSync clients, the scope resolver
//! and the rules engine once, from configuration, for every command that applies rules
//! (`work`, `run`, `backfill`, `demo`) and for tests and benches.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Settings;
use crate::salesforce::Priority;
use crate::skillsync::scope::{ScopeResolver, SourceCheckError};
use crate::store::Store;
use crate::sync::{Engine, SettingsHandle};

/// What the engine is made of; the parts stay reachable (backfill walks SkillSync's
/// listing with the same client and counts the same Salesforce calls).
pub struct Parts {
    pub engine: Arc<Engine>,
    pub salesforce: crate::salesforce::Client,
    pub skillsync: Arc<crate::skillsync::Client>,
    pub scope: Arc<ScopeResolver>,
}

/// How the engine is to be built.
pub struct Options {
    /// Live events, or bulk work that the Salesforce budget governor pauses first.
    pub priority: Priority,
    /// The mapping in force (`None`: fixed to `settings.sync`).
    pub mapping: Option<SettingsHandle>,
    /// With sync enabled, refuse an unknown or unvalidated source department (R2).
    pub validate_source: bool,
    /// Mark a learner uncertain when a Salesforce write to its records ends without an
    /// answer (`work`/`run`: reconcile re-verifies it).
    pub mark_uncertain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            priority: Priority::Live,
            mapping: None,
            validate_source: true,
            mark_uncertain: false,
        }
    }
}

fn scope_of(settings: &Settings, ss: Arc<crate::skillsync::Client>) -> ScopeResolver {
    ScopeResolver::new(
        ss,
        &settings.sync.source_department_id,
        settings.sync.scope,
        Duration::from_secs(settings.skillsync.department_cache_ttl_secs),
    )
}

/// Build the engine and its parts.
pub async fn build(
    settings: &Settings,
    store: Arc<dyn Store>,
    options: Options,
) -> anyhow::Result<Parts> {
    let salesforce = crate::salesforce::Client::new(&settings.salesforce)
        .context("Salesforce client")?
        .with_priority(options.priority);
    let skillsync =
        Arc::new(crate::skillsync::Client::new(&settings.skillsync).context("SkillSync client")?);
    let scope = Arc::new(scope_of(settings, skillsync.clone()));
    if options.validate_source {
        if settings.sync.enabled {
            let dept = scope.validate_source().await.map_err(|e| {
                anyhow::anyhow!(
                    "refusing to start: sync.source_department_id is not valid (R2): {e}"
                )
            })?;
            info!(department = %dept.id, name = %dept.name, scope = ?settings.sync.scope, "source department validated (R2)");
        } else {
            warn!("sync.enabled = false: events are recorded as skipped, nothing is written to Salesforce (R1)");
        }
    }
    let sf: Arc<dyn crate::salesforce::SalesforceApi> = if options.mark_uncertain {
        Arc::new(crate::sync::reconcile::wiring::UncertainMarker {
            inner: Arc::new(salesforce.clone()),
            store: store.clone(),
            link_field: settings.sync.link_field.clone(),
        })
    } else {
        Arc::new(salesforce.clone())
    };
    let engine = Arc::new(Engine::new(
        options
            .mapping
            .unwrap_or_else(|| SettingsHandle::fixed(settings.sync.clone())),
        sf,
        skillsync.clone(),
        scope.clone(),
        store,
        Duration::from_secs(settings.salesforce.account_cache_ttl_secs),
        Duration::from_secs(settings.worker.lease_ttl_secs),
    ));
    Ok(Parts {
        engine,
        salesforce,
        skillsync,
        scope,
    })
}

/// The R2 check: the source department exists in SkillSync (`GET /api/v1/departments/{id}` → 200).
pub async fn validate_source(
    settings: &Settings,
) -> Result<crate::model::Department, SourceCheckError> {
    let ss = crate::skillsync::Client::new(&settings.skillsync)
        .map_err(|e| SourceCheckError::Other(e.to_string()))?;
    scope_of(settings, Arc::new(ss)).validate_source().await
}
