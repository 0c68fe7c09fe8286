//! `syncback health`: probe this host's `/healthz` (or `/readyz`), for a container's
//! HEALTHCHECK (the runtime image has no curl). The port is worker.listen's when set
//! (`work`), else server.listen's (`receive`, `run`).

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Probe /readyz (broker and store reachable) instead of /healthz (the process serves).
    #[arg(long)]
    pub ready: bool,
    /// Probe this URL instead of the one derived from the configuration.
    #[arg(long)]
    pub url: Option<String>,
    /// Any HTTP answer counts as alive (for a URL that needs credentials).
    #[arg(long)]
    pub any_status: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub timeout: u64,
}

/// The URL to probe: the port of `worker.listen` when set, else `server.listen`, on the
/// loopback address when the process listens on every address.
pub fn probe_url(settings: &Settings, ready: bool) -> Result<String, String> {
    let (key, listen) = if settings.worker.listen.is_empty() {
        ("server.listen", &settings.server.listen)
    } else {
        ("worker.listen", &settings.worker.listen)
    };
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| format!("{key}: {listen:?} is not an address like 0.0.0.0:8080"))?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let path = if ready { "readyz" } else { "healthz" };
    Ok(format!("http://{ip}:{}/{path}", addr.port()))
}

pub async fn run(settings: &Settings, args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => probe_url(settings, args.ready).map_err(anyhow::Error::msg)?,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout.max(1)))
        .build()?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() || args.any_status => {
            println!("{url}: {}", r.status());
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("{url}: {status} {}", body.trim());
            Ok(super::exit::failure())
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            Ok(super::exit::failure())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_the_worker_port_when_set_else_the_server_port() {
        let mut s = Settings::default();
        s.server.listen = "0.0.0.0:8080".into();
        assert_eq!(
            probe_url(&s, false).unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        s.worker.listen = "0.0.0.0:9090".into();
        assert_eq!(probe_url(&s, true).unwrap(), "http://127.0.0.1:9090/readyz");
        s.worker.listen = "nonsense".into();
        assert!(probe_url(&s, false).unwrap_err().contains("worker.listen"));
    }
}
