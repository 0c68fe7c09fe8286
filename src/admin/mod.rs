//! The admin console (README "Admin console"; docs/rules.md R1–R5, R8, R13): the
//! vendor's *SkillSync Setup → Data Mapping* page, the dead-letter queue, learners,
//! ambiguity resolution, an overview and the audit log — server-rendered HTML
//! (minijinja templates, the vendored htmx script) on its own listener, `admin.listen`.
//!
//! Access: every page and action needs a session (login with `[[admin.users]]`,
//! Argon2id); state-changing requests also need the session's CSRF token (form field
//! `csrf` or header `X-CSRF-Token`) and are answered 401/403 without them, never
//! redirected. Every change is written to the audit log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::Settings;
use crate::queue::Queue;
use crate::store::Store;

pub mod actions;
pub mod auth;
mod dlq;
mod learners;
pub mod mapping;
mod pages;
mod views;

use auth::{Auth, LoginError, LOGIN_COOKIE, SESSION_COOKIE};

/// The console: shared by every request.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub sf: crate::salesforce::Client,
    pub ss: Arc<crate::skillsync::Client>,
    /// The rules engine for "link to this Contact" (built by the composition root,
    /// [`crate::app::build`]); its mapping is set from [`Inner::mapping`] before each use.
    engine: Arc<crate::sync::Engine>,
    mapping: crate::sync::SettingsWatch,
    pub auth: Auth,
    pub views: views::Views,
    pub jobs: Mutex<HashMap<String, dlq::Job>>,
}

/// The signed-in person, put in the request by the session guard.
#[derive(Clone, Debug)]
pub(crate) struct Authed {
    pub user: String,
    pub csrf: String,
}

impl Console {
    /// Build the console from configuration (the `[admin]` section must be valid): its
    /// Salesforce and SkillSync clients and its rules engine come from the composition root.
    pub async fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
    ) -> anyhow::Result<Self> {
        let problems = settings.admin_problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        let (mapping, handle) = crate::sync::SettingsHandle::channel(settings.sync.clone());
        let parts = crate::app::build(
            settings,
            store.clone(),
            crate::app::Options {
                priority: crate::salesforce::Priority::Live,
                mapping: Some(handle),
                // The console starts (and shows what is wrong) with an invalid source
                // department; the engine's R3 scope check still applies to each link.
                validate_source: false,
                mark_uncertain: true,
            },
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                store,
                queue,
                sf: parts.salesforce,
                ss: parts.skillsync,
                engine: parts.engine,
                mapping,
                auth: Auth::new(&settings.admin),
                views: views::Views::new()?,
                jobs: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    /// The console's engine, with the mapping in force now: the file's, or (console mode)
    /// the store's newest version — the source `work`/`run` processes load it from
    /// ([`mapping::current`]).
    pub(crate) async fn engine(&self) -> anyhow::Result<&crate::sync::Engine> {
        let v = mapping::current(self.store.as_ref(), &self.settings.sync)
            .await
            .map_err(|e| anyhow::anyhow!("reading the mapping in force: {e}"))?;
        self.mapping.publish(v.settings);
        Ok(&self.engine)
    }
}

/// Every route of the console.
pub fn router(console: Console) -> Router {
    let guarded = Router::new()
        .route("/overview", get(pages::overview))
        .route("/overview/panel", get(pages::overview_panel))
        .route(
            "/mapping",
            get(pages::mapping_page).post(pages::mapping_save),
        )
        .route(
            "/mapping/validate-department",
            post(pages::validate_department),
        )
        .route("/mapping/accounts", get(pages::account_search))
        .route("/dlq", get(dlq::list))
        .route("/dlq/event/{id}", get(dlq::show))
        .route("/dlq/action", post(dlq::action))
        .route("/dlq/jobs/{id}", get(dlq::job))
        .route("/learners", get(learners::learners))
        .route("/learners/{id}", get(learners::learner))
        .route("/learners/{id}/resync", post(learners::learner_resync))
        .route(
            "/resolve/{event_id}",
            get(learners::resolve).post(learners::resolve_link),
        )
        .route("/audit", get(learners::audit))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(console.clone(), guard));
    Router::new()
        .route("/", get(root))
        .route("/login", get(login_page).post(login))
        .route("/assets/htmx.min.js", get(htmx))
        .route("/assets/console.css", get(css))
        .merge(guarded)
        .fallback(not_found)
        .with_state(console)
}

/// Serve the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Console,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(console).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("assets/htmx.min.js"),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("assets/console.css"),
    )
}

async fn not_found(State(c): State<Console>) -> Response {
    c.inner
        .views
        .error(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

async fn root(State(c): State<Console>, jar: CookieJar) -> Redirect {
    let signed_in = jar
        .get(SESSION_COOKIE)
        .and_then(|k| c.inner.auth.session(k.value()))
        .is_some();
    Redirect::to(if signed_in { "/overview" } else { "/login" })
}

/// Is the request served over TLS (directly or through a proxy that says so)?
fn secure(c: &Console, headers: &HeaderMap) -> bool {
    c.inner.settings.admin.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A browser-session cookie (no Max-Age: the server ends sessions, see [`Auth`]).
fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    State(c): State<Console>,
    headers: HeaderMap,
    jar: CookieJar,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    render_login(&c, &headers, jar, q.next.as_deref(), None, StatusCode::OK)
}

fn render_login(
    c: &Console,
    headers: &HeaderMap,
    jar: CookieJar,
    next: Option<&str>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let token = auth::token();
    let jar = jar.add(cookie(LOGIN_COOKIE, token.clone(), secure(c, headers)));
    let html = c.inner.views.render(
        "login.html",
        minijinja::context! { csrf => token, next => next.unwrap_or(""), error => error },
    );
    (status, jar, html).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// The request's `Origin` (if sent) must be this console (CSRF on the login form).
fn origin_ok(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin != "null"
        && origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

async fn login(
    State(c): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(f): Form<LoginForm>,
) -> Response {
    let bound = jar.get(LOGIN_COOKIE).map(|k| k.value().to_string());
    if !origin_ok(&headers) || bound.is_none_or(|b| f.csrf.is_empty() || !auth::same(&b, &f.csrf)) {
        warn!(peer = %peer.ip(), "console login refused: CSRF token or Origin does not match");
        return c.inner.views.error(
            StatusCode::FORBIDDEN,
            "Login form expired",
            "The login form was not the one this console served (missing or wrong CSRF token). Reload the login page and try again.",
        );
    }
    let next = Some(f.next.as_str()).filter(|n| n.starts_with('/') && !n.starts_with("//"));
    match c
        .inner
        .auth
        .login(f.username.trim(), &f.password, &peer.ip().to_string())
    {
        Ok((sid, _)) => {
            info!(user = %f.username.trim(), "console login");
            let jar = jar
                .remove(Cookie::build(LOGIN_COOKIE).path("/"))
                .add(cookie(SESSION_COOKIE, sid, secure(&c, &headers)));
            (jar, Redirect::to(next.unwrap_or("/overview"))).into_response()
        }
        Err(LoginError::BadCredentials) => {
            warn!(user = %f.username.trim(), peer = %peer.ip(), "console login failed");
            render_login(
                &c,
                &headers,
                jar,
                next,
                Some("Wrong user name or password.".into()),
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(LoginError::RateLimited(wait)) => {
            warn!(user = %f.username.trim(), peer = %peer.ip(), "console login rate-limited");
            render_login(
                &c,
                &headers,
                jar,
                next,
                Some(format!(
                    "Too many failed logins. Try again in {wait} seconds."
                )),
                StatusCode::TOO_MANY_REQUESTS,
            )
        }
    }
}

async fn logout(State(c): State<Console>, jar: CookieJar) -> Response {
    if let Some(k) = jar.get(SESSION_COOKIE) {
        c.inner.auth.logout(k.value());
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    (jar, Redirect::to("/login")).into_response()
}

/// Session guard: no session → the login page (GET) or 401 (anything else); a
/// state-changing request also needs the session's CSRF token (else 403).
async fn guard(State(c): State<Console>, jar: CookieJar, req: Request, next: Next) -> Response {
    let session = jar
        .get(SESSION_COOKIE)
        .and_then(|k| c.inner.auth.session(k.value()));
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let Some(session) = session else {
        if safe {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let to = format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
            );
            return Redirect::to(&to).into_response();
        }
        return c.inner.views.error(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Sign in first: this action needs a console session.",
        );
    };
    let mut req = req;
    if !safe {
        let header_token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                return c.inner.views.error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "The form is too large.",
                )
            }
        };
        let form_token = url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        let ok = header_token
            .or(form_token)
            .is_some_and(|t| auth::same(&t, &session.csrf));
        if !ok {
            warn!(user = %session.user, path = %parts.uri.path(), "console request refused: missing or wrong CSRF token");
            return c.inner.views.error(
                StatusCode::FORBIDDEN,
                "Refused",
                "This request did not carry the page's CSRF token. Reload the page and try again.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(Authed {
        user: session.user.clone(),
        csrf: session.csrf.clone(),
    });
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    resp
}

/// Render a full page for the signed-in person.
pub(crate) fn page(
    c: &Console,
    who: &Authed,
    template: &str,
    nav: &str,
    ctx: minijinja::Value,
) -> Response {
    let base = minijinja::context! {
        user => who.user.clone(),
        csrf => who.csrf.clone(),
        nav => nav,
        managed_by => format!("{:?}", c.inner.settings.sync.managed_by).to_lowercase(),
    };
    let html = c
        .inner
        .views
        .render(template, minijinja::context! { ..base, ..ctx });
    html.into_response()
}
