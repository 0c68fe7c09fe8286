//! Helpers for tests that need the real RabbitMQ / PostgreSQL servers (or another
//! outside tool such as a Python client).
//!
//! A test never passes without having tested anything (README "Tests"):
//! - by default a missing server or tool FAILS the test, with a message naming what is
//!   missing and how to provide it;
//! - `SYNCBACK_ALLOW_SKIP=1` turns that into a skip: the test returns early and prints
//!   `SKIPPED` (run `cargo test -- --nocapture` or `cargo nextest run` to see the lines);
//! - with `CI=true` it always fails, whatever `SYNCBACK_ALLOW_SKIP` says.
//!
//! Destructive tests (`tests/restarts.rs`, which restart the machine's servers) are
//! `#[ignore]`d and also need `SYNCBACK_DESTRUCTIVE_TESTS=1` (see [`destructive_allowed`]).

use std::time::Duration;

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn reachable(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// `host:port` of a URL, with the scheme's default port.
fn host_port(url: &str, default_port: u16) -> String {
    let u = url::Url::parse(url).ok();
    let host = u
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = u.and_then(|u| u.port()).unwrap_or(default_port);
    format!("{host}:{port}")
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `SYNCBACK_ALLOW_SKIP=1`: tests whose server or tool is missing skip instead of failing.
pub fn skip_allowed() -> bool {
    env_flag("SYNCBACK_ALLOW_SKIP") && !in_ci()
}

/// What a test does when `what` is missing: panics (the default, and always with
/// `CI=true`) or, with `SYNCBACK_ALLOW_SKIP=1`, prints a loud `SKIPPED` line and returns
/// `false` so the caller returns early. `fix` tells the reader how to provide it.
pub fn unavailable(what: &str, fix: &str) -> bool {
    if in_ci() {
        panic!("{what}, and CI=true: this test must run ({fix})");
    }
    if skip_allowed() {
        eprintln!("\n!!!!! SKIPPED (SYNCBACK_ALLOW_SKIP=1): {what}; {fix} !!!!!\n");
        return false;
    }
    panic!("{what}: {fix}, or set SYNCBACK_ALLOW_SKIP=1 to skip the tests that need it");
}

/// Whether a Python module can be imported by `python3` (tests driving independent
/// clients); when not, see [`unavailable`].
pub fn python_module(module: &str, pip_name: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || unavailable(
        &format!("python3 cannot import {module}"),
        &format!("install it with `python3 -m pip install {pip_name}`"),
    )
}

/// Destructive tests (they restart the machine's RabbitMQ/PostgreSQL) run only with
/// `SYNCBACK_DESTRUCTIVE_TESTS=1` (`.ci/run` sets it). They are also `#[ignore]`d, so a
/// plain `cargo test` lists them as ignored; without the variable, running them
/// explicitly (`-- --ignored`) fails with this explanation rather than passing.
pub fn destructive_allowed(test: &str) -> bool {
    if env_flag("SYNCBACK_DESTRUCTIVE_TESTS") {
        return true;
    }
    panic!(
        "{test} restarts the local RabbitMQ/PostgreSQL and disturbs everything using them; \
         set SYNCBACK_DESTRUCTIVE_TESTS=1 to run it"
    );
}

fn require(name: &str, addr: &str) -> bool {
    reachable(addr)
        || unavailable(
            &format!("{name} is not reachable on {addr}"),
            &format!("start {name} (README \"Tests\")"),
        )
}

/// `Some(url)` of the local RabbitMQ; when it is down the test fails, or returns `None`
/// (skips) with `SYNCBACK_ALLOW_SKIP=1` (see the module docs).
pub fn rabbitmq() -> Option<String> {
    let url = std::env::var("SYNCBACK_TEST_AMQP_URL").unwrap_or_else(|_| RABBITMQ_URL.into());
    require("RabbitMQ", &host_port(&url, 5672)).then_some(url)
}

/// `Some(admin url)` of the local PostgreSQL; `None` only when skipping is allowed.
pub fn postgres() -> Option<String> {
    let url = std::env::var("SYNCBACK_TEST_PG_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.into());
    require("PostgreSQL", &host_port(&url, 5432)).then_some(url)
}

/// A fresh, uniquely named PostgreSQL database for one test; returns its URL.
///
/// Names carry the creating process id; the first call in a process drops the test
/// databases of processes that are gone, so repeated runs do not pile them up.
pub async fn fresh_postgres_db() -> Option<String> {
    use sqlx::Connection;
    static CLEANED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let admin = postgres()?;
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    if !CLEANED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let names: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'syncback_test_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for (name,) in names {
            let owner_alive = name
                .strip_prefix("syncback_test_p")
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !owner_alive {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
    let name = format!(
        "syncback_test_p{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}

/// A unique queue prefix so concurrent tests never share RabbitMQ queues.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "sbtest.{test}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Remove a test's RabbitMQ queues and exchanges (quorum queues are not free; tests
/// must not leave them behind on the shared broker).
pub async fn delete_rabbit_topology(settings: &crate::config::QueueSettings) {
    if settings.backend != crate::config::QueueBackend::Rabbitmq {
        return;
    }
    match crate::queue::rabbitmq::RabbitQueue::connect(settings).await {
        Ok(q) => {
            if let Err(e) = q.delete_topology().await {
                eprintln!("could not delete test queues {}: {e}", settings.prefix);
            }
        }
        Err(e) => eprintln!("could not delete test queues {}: {e}", settings.prefix),
    }
}
