//! Commands that only read the store (`learner status`, `mapping show`) against stores no
//! `work`/`run` has prepared: a database without syncback's tables, one with an older
//! schema, a SQLite path that does not exist. They say so naming `store.url`, exit 1, and
//! change nothing. (A mistyped SQLite path for `learner status` and a closed PostgreSQL
//! port: tests/cli.rs.)

mod cli_support;

use std::path::Path;

use cli_support::{args, env, syncback_split, Env};
use sqlx::Connection;

const NO_TABLES: &str = "store.url points at a database without syncback's tables";
const HOW: &str = "run `syncback work` or `syncback run` once to create them";

/// A config like `good.toml` with `store.url` replaced and `extra` lines in `[sync]`.
fn config_with_store(e: &Env, name: &str, store_url: &str, extra: &str) -> std::path::PathBuf {
    let cfg = e.config(name, "42", "sandbox-secret", None, extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let default = format!("sqlite://{}", e.dir.path().join("state.db").display());
    assert!(text.contains(&default));
    std::fs::write(&cfg, text.replace(&default, store_url)).unwrap();
    cfg
}

/// Both read-only commands fail with `expected` on stderr, exit 1, print nothing on stdout.
async fn both_fail_with(plain: &Path, console: &Path, expected: &[&str]) {
    for (cfg, cmd) in [
        (plain, &["learner", "status", "L1"][..]),
        (console, &["mapping", "show"][..]),
    ] {
        let (code, out, err) = syncback_split(args(cfg, cmd)).await;
        assert_eq!(code, 1, "{cmd:?}: {out}{err}");
        for e in expected {
            assert!(err.contains(e), "{cmd:?}: {e:?} not in stderr: {err}");
        }
        assert!(!err.contains("no such table"), "{cmd:?}: {err}");
        assert!(out.is_empty(), "{cmd:?}: {out}");
    }
}

async fn sqlite_tables(path: &Path) -> Vec<String> {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap();
    rows.into_iter().map(|(n,)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_on_a_sqlite_file_without_tables_say_so() {
    let e = env().await;
    let console = r#"managed_by = "console""#;

    // An empty file (e.g. `touch`ed), then an SQLite database with someone else's table.
    let empty = e.dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let url = format!("sqlite://{}", empty.display());
    both_fail_with(
        &config_with_store(&e, "empty.toml", &url, ""),
        &config_with_store(&e, "empty-console.toml", &url, console),
        &[
            NO_TABLES,
            &format!("(SQLite file {})", empty.display()),
            HOW,
        ],
    )
    .await;
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "left as it was"
    );

    let other = e.dir.path().join("other.db");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", other.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let url = format!("sqlite://{}", other.display());
    both_fail_with(
        &config_with_store(&e, "other.toml", &url, ""),
        &config_with_store(&e, "other-console.toml", &url, console),
        &[
            NO_TABLES,
            &format!("(SQLite file {})", other.display()),
            HOW,
        ],
    )
    .await;
    assert_eq!(sqlite_tables(&other).await, ["notes"], "nothing created");

    // A schema from an older syncback: its newest migration undone in the ledger.
    let older = e.dir.path().join("older.db");
    let url = format!("sqlite://{}", older.display());
    syncback::store::open(&url, 1).await.unwrap();
    let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rw"))
        .await
        .unwrap();
    let (latest,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(latest)
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    both_fail_with(
        &config_with_store(&e, "older.toml", &url, ""),
        &config_with_store(&e, "older-console.toml", &url, console),
        &[
            "store.url points at a database with an older syncback schema",
            &format!("migration {} of {latest}", latest - 1),
            "run `syncback work` or `syncback run` once to bring it up to date",
        ],
    )
    .await;
}

/// A fresh PostgreSQL database (no migration ever ran): both commands say so, naming the
/// server and database (never the user); `config check` reports it as normal before the
/// first start. The database is dropped at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_on_a_postgres_database_without_tables_say_so() {
    let Some(admin) = syncback::testing::postgres() else {
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let name = db.rsplit('/').next().unwrap().to_string();
    let shown = {
        let u = url::Url::parse(&db).unwrap();
        format!(
            "(postgres://{}:{}/{name})",
            u.host_str().unwrap(),
            u.port().unwrap_or(5432)
        )
    };
    let e = env().await;
    let plain = config_with_store(&e, "pg.toml", &db, "");
    both_fail_with(
        &plain,
        &config_with_store(&e, "pg-console.toml", &db, r#"managed_by = "console""#),
        &[NO_TABLES, &shown, HOW],
    )
    .await;

    let (code, out, err) = syncback_split(args(&plain, &["config", "check"])).await;
    assert!(
        out.contains("has no syncback tables yet: `work`/`run` will create them (store.url)"),
        "{out}{err}"
    );
    assert_eq!(
        code, 0,
        "tables created by the first start are no problem: {out}{err}"
    );

    let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    assert_eq!(tables, 0, "the read-only commands created nothing");

    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
}

/// `mapping show` only reads: file mode needs no store at all; console mode opens it
/// read-only, so a missing SQLite path is an error naming `store.url` and no file appears;
/// on a prepared store with no version saved yet it shows the `[sync]` section to be
/// seeded and seeds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_show_never_creates_or_writes_the_store() {
    let e = env().await;
    let missing = e.dir.path().join("nowhere.db");
    let url = format!("sqlite://{}", missing.display());

    let file_mode = config_with_store(&e, "file.toml", &url, "");
    let (code, out, err) = syncback_split(args(&file_mode, &["mapping", "show"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("managed_by            file"), "{out}");
    assert!(out.contains("source_department_id  42"), "{out}");
    assert!(
        !missing.exists(),
        "file mode: no store opened, none created"
    );

    let console_mode = config_with_store(&e, "console.toml", &url, r#"managed_by = "console""#);
    let (code, out, err) = syncback_split(args(&console_mode, &["mapping", "show"])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("store.url") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(
        !missing.exists(),
        "console mode: no database created at a missing path"
    );

    let store = syncback::store::open(&url, 1).await.unwrap();
    let (code, out, err) =
        syncback_split(args(&console_mode, &["mapping", "show", "--json"])).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["managed_by"], "console", "{v}");
    assert!(v["version"].is_null(), "{v}");
    assert_eq!(v["settings"]["source_department_id"], "42", "{v}");
    let (code, out, _) = syncback_split(args(&console_mode, &["mapping", "show"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("no version saved yet"), "{out}");
    assert!(
        store.latest_mapping().await.unwrap().is_none(),
        "mapping show seeded nothing"
    );
}
