//! The command-line twins of the console's actions (README "Admin console"):
//! `admin hash-password`, `mapping show|set`, `learner resync|link` — the same code
//! as the console ([`crate::admin`]).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::MappingCmd;
use crate::admin::{actions, auth, mapping};
use crate::config::{ManagedBy, Role, Settings};
use crate::store::Store;

fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|| "cli".into())
}

async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    super::stores::open(settings).await
}

/// `syncback admin hash-password`: one line on stdin → its Argon2id PHC string.
pub fn hash_password() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Type the password, then Enter (it is echoed; pipe it in to avoid that):");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!pw.is_empty(), "no password on stdin");
    println!("{}", auth::hash_password(pw)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn mapping(settings: Settings, cmd: MappingCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        MappingCmd::Show { json } => {
            settings.validate_for(Role::Status)?;
            // Only reads: the file's [sync] section needs no store; console mode opens it
            // read-only (never created or migrated here) and seeds nothing.
            let v = match settings.sync.managed_by {
                ManagedBy::File => mapping::of_file(&settings.sync),
                ManagedBy::Console => {
                    let store = super::stores::open_read_only(&settings).await?;
                    mapping::peek(store.as_ref(), &settings.sync).await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_mapping(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        MappingCmd::Set { pairs, actor: who } => {
            settings.validate_for(Role::Work)?;
            let mut kv = Vec::new();
            for p in &pairs {
                let Some((k, v)) = p.split_once('=') else {
                    anyhow::bail!("{p:?}: write key=value (e.g. scope=department_only)");
                };
                kv.push((k.trim().to_string(), v.to_string()));
            }
            let store = open_store(&settings).await?;
            let view = mapping::current(store.as_ref(), &settings.sync).await?;
            let next = match mapping::apply_pairs(&view.settings, &kv) {
                Ok(n) => n,
                Err(errs) => {
                    for e in errs {
                        eprintln!("✗ {}: {}", e.field, e.message);
                    }
                    return Ok(super::exit::code(super::exit::REJECTED));
                }
            };
            let sf = crate::salesforce::Client::new(&settings.salesforce)?;
            let ss = crate::skillsync::Client::new(&settings.skillsync)?;
            match mapping::save(store.as_ref(), &sf, &ss, &view, next, &actor(who)).await {
                Ok(v) => {
                    println!("saved mapping version {v}; workers apply it within seconds");
                    Ok(ExitCode::SUCCESS)
                }
                Err(mapping::SaveError::Invalid(errs)) => {
                    for e in errs {
                        eprintln!("✗ {}: {}", e.field, e.message);
                    }
                    Ok(super::exit::code(super::exit::REJECTED))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn print_mapping(v: &mapping::MappingView) {
    let s = &v.settings;
    match (v.managed_by, v.version) {
        (ManagedBy::Console, Some(n)) => println!(
            "managed_by            console (version {n}, saved by {} at {})",
            v.saved_by.as_deref().unwrap_or("?"),
            v.saved_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ),
        (ManagedBy::Console, None) => println!(
            "managed_by            console (no version saved yet: the [sync] section below \
             becomes version 1 at the first `work`/`run` or `mapping set`)"
        ),
        (ManagedBy::File, _) => {
            println!("managed_by            file (the [sync] section of the configuration)")
        }
    }
    println!("enabled               {}", s.enabled);
    println!("source_department_id  {}", s.source_department_id);
    println!(
        "scope                 {}",
        serde_json::to_value(s.scope)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?")
    );
    println!(
        "account_rule          {}",
        serde_json::to_value(s.account_rule)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?")
    );
    println!("default_account_id    {}", s.default_account_id);
    println!("account_field         {}", s.account_field);
    println!("match_field           {}", s.match_field);
    println!("link_field            {}", s.link_field);
    println!(
        "field_map             {}",
        mapping::field_map_text(s).replace('\n', "; ")
    );
}

pub async fn learner_resync(
    settings: Settings,
    id: &str,
    who: Option<String>,
) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Work)?;
    let store = open_store(&settings).await?;
    let queue = crate::queue::connect(&settings.queue)
        .await
        .context("connecting to the broker (queue.url)")?;
    let ss = crate::skillsync::Client::new(&settings.skillsync)?;
    let r = actions::resync(id, &ss, queue.as_ref(), store.as_ref(), &actor(who)).await;
    queue.close().await;
    let ev = r?;
    println!("re-sync of learner {id} queued as event {ev}; `syncback learner status {id}` shows its outcome");
    Ok(ExitCode::SUCCESS)
}

pub async fn learner_link(
    settings: Settings,
    id: &str,
    contact: &str,
    who: Option<String>,
) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Work)?;
    let store = open_store(&settings).await?;
    let queue = crate::queue::connect(&settings.queue)
        .await
        .context("connecting to the broker (queue.url)")?;
    // The mapping in force: the file's, or (console mode) the store's newest version, as
    // `work`/`run` load it; the engine comes from the composition root.
    let s = mapping::current(store.as_ref(), &settings.sync)
        .await
        .context("reading the mapping in force (sync.managed_by = \"console\")")?
        .settings;
    let parts = crate::app::build(
        &settings,
        store.clone(),
        crate::app::Options {
            priority: crate::salesforce::Priority::Live,
            mapping: Some(crate::sync::SettingsHandle::fixed(s)),
            // R3 still decides whether the learner can be linked.
            validate_source: false,
            mark_uncertain: true,
        },
    )
    .await;
    let r = match parts {
        Ok(p) => {
            actions::link(
                id,
                contact,
                &p.engine,
                &p.salesforce,
                p.skillsync.as_ref(),
                queue.as_ref(),
                &actor(who),
            )
            .await
        }
        Err(e) => Err(e),
    };
    queue.close().await;
    let l = r?;
    println!(
        "learner {id} linked to Contact {contact} ({}: {}); {} dead letters replayed; `syncback learner status {id}` shows its history",
        l.outcome.code, l.outcome.detail, l.replayed
    );
    Ok(ExitCode::SUCCESS)
}

/// The demo's login for the console `syncback demo --keep-running` serves.
pub const DEMO_USER: &str = "admin";
pub const DEMO_PASSWORD: &str = "syncback-demo";

/// Serve the console for `demo --keep-running` on a free local port (until `shutdown`),
/// with the one demo login; returns its URL.
pub async fn serve_demo_console(
    settings: &Settings,
    store: Arc<dyn Store>,
    queue: Arc<dyn crate::queue::Queue>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let mut s = settings.clone();
    s.admin.listen = "127.0.0.1:0".into();
    s.admin.users = vec![crate::config::AdminUser {
        name: DEMO_USER.into(),
        password_hash: crate::config::Secret::new(auth::hash_password(DEMO_PASSWORD)?),
    }];
    let console = crate::admin::Console::new(&s, store, queue).await?;
    let listener = tokio::net::TcpListener::bind(&s.admin.listen)
        .await
        .context("binding the demo console")?;
    let url = format!("http://{}/", listener.local_addr()?);
    let mut stop = shutdown;
    tokio::spawn(crate::admin::serve(listener, console, async move {
        let _ = stop.wait_for(|v| *v).await;
    }));
    Ok(url)
}
