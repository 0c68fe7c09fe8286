//! Templates (minijinja, compiled into the binary from `src/admin/templates/`).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;

pub struct Views {
    env: Environment<'static>,
}

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    (
        "overview_panel.html",
        include_str!("templates/overview_panel.html"),
    ),
    ("mapping.html", include_str!("templates/mapping.html")),
    ("dlq.html", include_str!("templates/dlq.html")),
    ("dlq_event.html", include_str!("templates/dlq_event.html")),
    (
        "dlq_confirm.html",
        include_str!("templates/dlq_confirm.html"),
    ),
    ("dlq_job.html", include_str!("templates/dlq_job.html")),
    ("learners.html", include_str!("templates/learners.html")),
    ("learner.html", include_str!("templates/learner.html")),
    ("resolve.html", include_str!("templates/resolve.html")),
    ("audit.html", include_str!("templates/audit.html")),
];

impl Views {
    pub fn new() -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .map_err(|e| anyhow::anyhow!("template {name}: {e}"))?;
        }
        Ok(Self { env })
    }

    /// Render a template; a template error is a 500 page (and a log line), never a panic.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(template = name, error = %e, "console template failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Html(format!(
                        "<h1>Console error</h1><p>template {name}: {}</p>",
                        html_escape(&e.to_string())
                    )),
                )
                    .into_response()
            }
        }
    }

    /// A small error page with the right status.
    pub fn error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        let mut r = self.render(
            "error.html",
            minijinja::context! { title => title, message => message, status => status.as_u16() },
        );
        *r.status_mut() = status;
        r
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
