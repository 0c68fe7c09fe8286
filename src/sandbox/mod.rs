//! Salesforce and SkillSync emulators speaking the real wire formats (tests, `demo`).
//!
//! Both share their fault controls ([`faults`]) and their HTTP server ([`serve`]).

pub mod faults;
pub mod salesforce;
pub mod skillsync;

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::Router;

/// Serve `router` over HTTP on `addr` (port 0 picks one); returns the bound address and
/// the server task (abort it to stop serving).
pub async fn serve(
    router: Router,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((bound, handle))
}

/// The token of an `Authorization: <scheme> <token>` header, for any of `schemes`.
pub(crate) fn bearer_token(headers: &HeaderMap, schemes: &[&str]) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    schemes.iter().find_map(|scheme| {
        value
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(String::from)
    })
}
