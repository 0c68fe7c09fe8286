//! `syncback reconcile`: find (and repair) drift between SkillSync, the store and Salesforce.
//!
//! Exit codes: 0 — Salesforce matches SkillSync (nothing found, or everything found was
//! repaired); 2 — drift remains (a dry run found some, or `on_field_drift = "report"` left
//! Salesforce edits in place); 3 — some repairs failed; 1 — the pass could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Role, Settings};
use crate::skillsync::scope::ScopeResolver;
use crate::sync::reconcile::pass::{Progress, RepairPort};
use crate::sync::reconcile::{PassKind, Reconciler, Report, Selection};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this department and its sub-departments (inside the configured scope).
    #[arg(long, value_name = "ID", conflicts_with = "learner")]
    pub department: Option<String>,
    /// Only this learner (repeat for several).
    #[arg(long, value_name = "ID")]
    pub learner: Vec<String>,
    /// Print the differences and write nothing anywhere (Salesforce, outcomes, checkpoints).
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per line per difference on stdout (summary on stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the report as CSV to this file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

pub async fn run(
    settings: Settings,
    args: ReconcileArgs,
    repair: Option<Arc<dyn RepairPort>>,
) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Backfill)?;
    let store = super::stores::open(&settings).await?;
    // The mapping in force (`sync.managed_by = "console"`: the store's newest version).
    let mut settings = settings;
    settings.sync = crate::admin::mapping::for_process(store.as_ref(), &settings.sync)
        .await
        .context("reading the mapping in force")?
        .0;
    // Bulk priority: the budget governor pauses reconcile before live events
    // (salesforce.max_api_share, README "Salesforce API budget").
    let sf = crate::salesforce::Client::new(&settings.salesforce)?
        .with_priority(crate::salesforce::Priority::Bulk);
    let ss = Arc::new(crate::skillsync::Client::new(&settings.skillsync)?);
    let scope = Arc::new(ScopeResolver::new(
        ss.clone(),
        &settings.sync.source_department_id,
        settings.sync.scope,
        Duration::from_secs(settings.skillsync.department_cache_ttl_secs),
    ));
    scope.validate_source().await.map_err(|e| {
        anyhow::anyhow!("refusing to reconcile: source department is not valid (R2): {e}")
    })?;
    let counter = sf.clone();
    let sf: Arc<dyn crate::salesforce::SalesforceApi> = Arc::new(sf);
    // Repairs go through the one apply path the events use (every rule, the per-learner
    // lease, the outcome history).
    let repair = match repair {
        Some(r) => Some(r),
        None if args.dry_run => None,
        None => {
            let engine = crate::sync::Engine::new(
                crate::sync::SettingsHandle::fixed(settings.sync.clone()),
                sf.clone(),
                ss.clone(),
                scope.clone(),
                store.clone(),
                Duration::from_secs(settings.salesforce.account_cache_ttl_secs),
                Duration::from_secs(settings.worker.lease_ttl_secs),
            );
            Some(Arc::new(crate::sync::reconcile::wiring::EngineRepair {
                engine: Arc::new(engine),
            }) as Arc<dyn RepairPort>)
        }
    };
    let reconciler = Reconciler {
        sync: settings.sync.clone(),
        settings: settings.reconcile.clone(),
        sf,
        ss,
        scope,
        store,
        repair,
        sf_calls: Some(Arc::new(move || counter.total_calls())),
    };
    execute(&reconciler, &args).await
}

/// Run the pass the arguments ask for and print it; returns the exit code.
pub async fn execute(reconciler: &Reconciler, args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    let selection = if args.learner.is_empty() {
        Selection::All {
            department: args.department.clone(),
        }
    } else {
        Selection::Learners(args.learner.clone())
    };
    // One reconciler at a time; a dry run writes nothing, not even the lease.
    let holder = format!("cli-{}", uuid::Uuid::new_v4());
    if !args.dry_run {
        anyhow::ensure!(
            reconciler.lease(&holder, Duration::from_secs(3600)).await?,
            "another reconcile is running (store lease {:?}); try again when it has finished",
            crate::sync::reconcile::pass::LEASE
        );
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} learners, {msg} ({per_sec}, ETA {eta})")
            .expect("static template"),
    );
    let on_progress = {
        let bar = bar.clone();
        move |p: Progress| {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(format!("{} drifts", p.drifts));
        }
    };
    let result = reconciler
        .run(&selection, PassKind::Full, args.dry_run, &on_progress)
        .await;
    bar.finish_and_clear();
    if !args.dry_run {
        reconciler.release(&holder).await;
    }
    let report = result?;
    if let Some(path) = &args.csv {
        write_csv(path, &report).with_context(|| format!("writing --csv {}", path.display()))?;
    }
    if args.json {
        for d in &report.drifts {
            println!("{}", serde_json::to_string(d)?);
        }
        eprintln!("{}", summary(&report));
    } else {
        if !report.drifts.is_empty() {
            println!("{:<12} {:<16} detail", "learner", "kind");
            for d in &report.drifts {
                println!("{d}");
            }
            println!();
        }
        println!("{}", summary(&report));
    }
    Ok(exit_code(&report))
}

/// 0: in sync; 6: drift remains; 7: repairs failed (README "Exit codes").
pub fn exit_code(r: &Report) -> ExitCode {
    if !r.failures.is_empty() {
        super::exit::code(super::exit::REPAIRS_FAILED)
    } else if r.remaining() > 0 {
        super::exit::code(super::exit::DRIFT_REMAINS)
    } else {
        ExitCode::SUCCESS
    }
}

/// The summary by kind.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(if r.dry_run {
        "DRY RUN — nothing was written (Salesforce, outcomes, checkpoints).\n"
    } else {
        "Reconcile finished.\n"
    });
    out.push_str(&format!("  learners checked {}\n", r.learners));
    let by_kind = r.by_kind();
    if by_kind.is_empty() {
        out.push_str("  no drift: Salesforce matches SkillSync and the rules\n");
    } else {
        out.push_str(&format!(
            "  {:<18} {:>6} {:>9}\n",
            "drift", "found", "repaired"
        ));
        for (k, n) in &by_kind {
            let fixed = r.repaired.get(k.as_str()).copied().unwrap_or(0);
            out.push_str(&format!("  {:<18} {n:>6} {fixed:>9}\n", k.as_str()));
        }
        let reported = r.drifts.iter().filter(|d| d.report_only).count();
        if reported > 0 {
            out.push_str(&format!(
                "  {reported} field drift(s) left in Salesforce (reconcile.on_field_drift = \"report\")\n"
            ));
        }
    }
    for f in &r.failures {
        out.push_str(&format!(
            "  repair failed for {}: {}\n",
            f.learner_id, f.error
        ));
    }
    for p in &r.problems {
        out.push_str(&format!(
            "  cannot check {} fully: {} — {}\n",
            p.learner_id, p.code, p.detail
        ));
    }
    out.push_str(&format!(
        "  Salesforce calls {} ({:.4} per learner), {:.1} s",
        r.salesforce_calls,
        if r.learners == 0 {
            0.0
        } else {
            r.salesforce_calls as f64 / r.learners as f64
        },
        r.elapsed_ms as f64 / 1000.0
    ));
    out
}

fn write_csv(path: &std::path::Path, r: &Report) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "learner_id",
        "kind",
        "contact_id",
        "field",
        "salesforce",
        "expected",
        "action",
        "detail",
    ])?;
    let failed: std::collections::BTreeSet<&str> =
        r.failures.iter().map(|f| f.learner_id.as_str()).collect();
    let value = |v: &Option<serde_json::Value>| match v {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    for d in &r.drifts {
        let action = if d.report_only {
            "reported"
        } else if r.dry_run {
            "would_repair"
        } else if failed.contains(d.learner_id.as_str()) {
            "repair_failed"
        } else {
            "repaired"
        };
        w.write_record([
            d.learner_id.as_str(),
            d.kind.as_str(),
            d.contact_id.as_deref().unwrap_or(""),
            d.field.as_deref().unwrap_or(""),
            &value(&d.salesforce),
            &value(&d.expected),
            action,
            &d.detail,
        ])?;
    }
    w.flush()?;
    Ok(())
}
