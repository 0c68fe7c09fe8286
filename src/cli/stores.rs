//! Opening the state store and probing the broker from the CLI: fail fast with the address
//! and the key (`connection refused at 127.0.0.1:5433 (store.url)`), and never create a
//! SQLite file from a command that only reads.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::store::{self, SchemaState, SqlStore, Store};

/// How long a TCP probe of the broker or PostgreSQL may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Can a TCP connection be opened to the host and port of `url` (default `port`)? The
/// error names the address and `key`, never the URL (it may carry a password).
pub async fn probe(url: &str, default_port: u16, key: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("{key}: not a URL ({e})"))?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{key}: the URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(default_port);
    let addr = format!("{host}:{port}");
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            anyhow::bail!("connection refused at {addr} ({key})")
        }
        Ok(Err(e)) => anyhow::bail!("cannot connect to {addr} ({key}): {e}"),
        Err(_) => anyhow::bail!(
            "no answer from {addr} within {} s ({key})",
            PROBE_TIMEOUT.as_secs()
        ),
    }
}

/// Probe the PostgreSQL server of `store.url` (SQLite needs none).
async fn probe_store(url: &str) -> anyhow::Result<()> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        probe(url, 5432, "store.url").await?;
    }
    Ok(())
}

/// Probe every broker node (`queue.url` or `queue.urls`); Ok when one answers.
pub async fn probe_broker(settings: &Settings) -> anyhow::Result<()> {
    if settings.queue.backend == crate::config::QueueBackend::Memory {
        return Ok(());
    }
    let key = if settings.queue.urls.is_empty() {
        "queue.url"
    } else {
        "queue.urls"
    };
    let mut last = None;
    for u in settings.queue.node_urls() {
        let port = if u.starts_with("amqps:") { 5671 } else { 5672 };
        match probe(&u, port, key).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{key}: no broker URL")))
}

/// The file of a `sqlite:` URL (None for `:memory:`).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

/// Open (creating and migrating if needed) the store for a process that writes.
pub async fn open(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = settings.store.url.expose();
    probe_store(url).await?;
    store::open(url, settings.store.max_connections)
        .await
        .context("opening the state store (store.url)")
}

/// Open the store for a command that only reads: never creates a SQLite file (a mistyped
/// path is an error naming `store.url`), opens it read-only, runs no migration, and
/// requires syncback's tables (a database no `work`/`run` has prepared is an error saying
/// so, not a raw "relation does not exist").
pub async fn open_read_only(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let s = connect_read_only(settings).await?;
    let state = s
        .schema_state()
        .await
        .context("reading which migrations the state store has had (store.url)")?;
    let url = settings.store.url.expose();
    match state {
        SchemaState::Current => Ok(Arc::new(s)),
        SchemaState::Missing => anyhow::bail!(
            "store.url points at a database without syncback's tables ({}): run `syncback \
             work` or `syncback run` once to create them",
            describe(url)
        ),
        SchemaState::Behind { applied, latest } => anyhow::bail!(
            "store.url points at a database with an older syncback schema ({}; migration \
             {applied} of {latest}): run `syncback work` or `syncback run` once to bring it \
             up to date",
            describe(url)
        ),
    }
}

/// Connect read-only without migrating or looking at the schema (`config check` reports
/// the schema itself): never creates a SQLite file.
pub async fn connect_read_only(settings: &Settings) -> anyhow::Result<SqlStore> {
    let url = settings.store.url.expose();
    probe_store(url).await?;
    let url = match sqlite_path(url) {
        Some(path) => {
            if !path.is_file() {
                anyhow::bail!(
                    "store.url: there is no SQLite database at {} (this command only reads and \
                     never creates one: check store.url, or start `syncback work`/`run` once)",
                    path.display()
                );
            }
            let base = url.split('?').next().unwrap_or(url);
            format!("{base}?mode=ro")
        }
        None => url.to_string(),
    };
    store::SqlStore::connect(&url, settings.store.max_connections.min(2))
        .await
        .context("opening the state store read-only (store.url)")
}

/// `store.url` as it may be shown: the SQLite file, or the PostgreSQL server and database
/// without user, password or parameters.
pub fn describe(url: &str) -> String {
    if let Some(path) = sqlite_path(url) {
        return format!("SQLite file {}", path.display());
    }
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}{}",
                u.scheme(),
                u.host_str().unwrap_or_default(),
                u.path()
            )
        }
        Err(_) => "store.url".into(),
    }
}
