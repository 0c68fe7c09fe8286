//! Shared by tests/cli.rs and tests/config_check.rs: sandboxes on free ports, a config
//! file pointing at them, and the binary run off the test runtime's threads.
#![allow(dead_code)] // each test crate uses a part

use std::process::Command;

use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sf: String,
    pub ss: String,
    pub org: Org,
    pub lms: Lms,
}

pub async fn env() -> Env {
    let org = Org::new();
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    let (sf, _) = org.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (ss, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Env {
        dir: tempfile::tempdir().unwrap(),
        sf: format!("http://{sf}"),
        ss: format!("http://{ss}"),
        org,
        lms,
    }
}

impl Env {
    pub fn config(
        &self,
        name: &str,
        dept: &str,
        ss_secret: &str,
        ss_url: Option<&str>,
        extra: &str,
    ) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "memory"
[store]
url = "sqlite://{db}"
[salesforce]
login_url = "{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[skillsync]
base_url = "{ss}"
client_id = "sandbox-client"
client_secret = "{ss_secret}"
[sync]
enabled = true
source_department_id = "{dept}"
{extra}
"#,
                db = self.dir.path().join("state.db").display(),
                sf = self.sf,
                ss = ss_url.unwrap_or(&self.ss),
            ),
        )
        .unwrap();
        path
    }
}

/// Run the binary off the test runtime's threads (the sandboxes must keep answering):
/// (exit code, stdout followed by stderr).
pub async fn syncback(args: Vec<String>) -> (i32, String) {
    let (code, out, err) = syncback_split(args).await;
    (code, format!("{out}{err}"))
}

/// [`syncback`] with stdout and stderr apart: (exit code, stdout, stderr).
pub async fn syncback_split(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_syncback"))
            .args(&args)
            .env("RUST_LOG", "error")
            .env_remove("SYNCBACK_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

pub fn args(cfg: &std::path::Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--config".to_string(), cfg.display().to_string()];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}
