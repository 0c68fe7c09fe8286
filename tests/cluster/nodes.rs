//! Three throw-away RabbitMQ nodes on this machine, clustered with `rabbitmqctl
//! join_cluster`, beside (never touching) the machine's own broker.
//!
//! Each node has its own node name, AMQP, distribution and CLI ports (all away from the
//! default 5672/25672 and the CLI range 35672–35682), config, data and log directories,
//! `HOME` in a temp dir and a random Erlang cookie passed with `-setcookie`. The Debian
//! wrappers in /usr/sbin switch to the `rabbitmq` user, so the scripts under the
//! package's own `sbin` directory are called instead. [`Cluster`] is a drop guard: the
//! nodes are killed and their directories removed however the test ends.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The package's own scripts (`rabbitmq-server`, `rabbitmqctl`), if installed.
pub fn sbin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SYNCBACK_RABBITMQ_SBIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/rabbitmq/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("sbin"))
        .filter(|p| p.join("rabbitmq-server").exists() && p.join("rabbitmqctl").exists())
        .collect();
    found.sort();
    found.pop()
}

pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The OS pids of this node's Erlang VM: from its pid file once booted, else found
    /// by its (unique, random) node name on the command line.
    fn beam_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .into_iter()
            .collect();
        let short = self
            .name
            .split('@')
            .next()
            .unwrap_or(&self.name)
            .to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let cli = cmdline.contains("rabbitmqcli") || cmdline.contains("rabbitmqctl");
            if cmdline.contains("beam") && cmdline.contains(&short) && !cli && !pids.contains(&pid)
            {
                pids.push(pid);
            }
        }
        pids
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    sbin: PathBuf,
    cookie: String,
    /// `RABBITMQ_CTL_DIST_PORT_MIN`..`MAX` of the command-line tools.
    ctl_ports: (u16, u16),
    root: tempfile::TempDir,
}

/// `n` consecutive free TCP ports on 127.0.0.1, away from RabbitMQ's defaults.
fn free_port_block(n: u16) -> u16 {
    let avoid = |p: u16| (35672..=35682).contains(&p) || p == 5672 || p == 25672 || p == 4369;
    for _ in 0..200 {
        let base = 40_000 + (rand::random::<u16>() % 20_000);
        let ok = (base..base + n).all(|p| {
            !avoid(p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && {
                // Nobody listening on the port either.
                TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_millis(50))
                    .is_err()
            }
        });
        if ok {
            return base;
        }
    }
    panic!("no block of {n} free ports found");
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl Cluster {
    /// Start `n` nodes and join nodes 2.. to node 1; returns once all run as one cluster.
    pub fn start(sbin: &Path, n: usize) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("syncback-cluster-")
            .tempdir()
            .unwrap();
        let base = free_port_block(40);
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut c = Cluster {
            nodes: Vec::new(),
            sbin: sbin.to_path_buf(),
            cookie: format!("SYNCBACKTEST{}", uuid::Uuid::new_v4().simple()).to_uppercase(),
            ctl_ports: (base + 30, base + 39),
            root,
        };
        for i in 0..n {
            let dir = c.root.path().join(format!("n{i}"));
            for sub in ["home", "data", "log"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            c.nodes.push(Node {
                name: format!("sbtest{tag}n{i}@localhost"),
                amqp_port: base + i as u16,
                dist_port: base + 10 + i as u16,
                dir,
                child: None,
            });
        }
        for i in 0..n {
            c.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            c.wait_amqp(i, deadline);
        }
        // Join in parallel: each `rabbitmqctl` is a whole Erlang VM starting up.
        let first = c.nodes[0].name.clone();
        std::thread::scope(|s| {
            for i in 1..n {
                let c = &c;
                let first = first.clone();
                s.spawn(move || {
                    c.ctl(i, &["stop_app"]);
                    c.ctl(i, &["join_cluster", &first]);
                    c.ctl(i, &["start_app"]);
                });
            }
        });
        for i in 0..n {
            c.wait_amqp(i, deadline);
        }
        let running = c.running_nodes(0);
        assert_eq!(
            running.len(),
            n,
            "cluster_status on {first} lists {running:?}"
        );
        c
    }

    fn env(&self, i: usize, cmd: &mut Command) {
        let node = &self.nodes[i];
        let d = &node.dir;
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", d.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("data"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!("-setcookie {}", self.cookie),
            )
            .env(
                "RABBITMQ_CTL_ERL_ARGS",
                format!("-setcookie {}", self.cookie),
            )
            .env("RABBITMQ_CTL_DIST_PORT_MIN", self.ctl_ports.0.to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MAX", self.ctl_ports.1.to_string());
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let d = &node.dir;
        std::fs::write(d.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n\
                 log.console = false\nlog.file.level = warning\n",
                node.amqp_port
            ),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        let log = std::fs::File::create(d.join("server.out")).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg(self.sbin.join("rabbitmq-server"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.env(i, &mut cmd);
        let child = cmd.spawn().expect("start rabbitmq-server");
        // Should this test process die without running `Drop` (SIGKILL, abort), a
        // watchdog still kills the node once the test process is gone.
        let watchdog = format!(
            "while kill -0 {test} 2>/dev/null && [ -d '{dir}' ]; do sleep 1; done; \
             [ -d '{dir}' ] && kill -KILL $(cat '{pidfile}' 2>/dev/null) {script} 2>/dev/null; \
             rm -rf '{dir}'",
            test = std::process::id(),
            pidfile = d.join("pid").display(),
            script = child.id(),
            dir = d.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.nodes[i].child = Some(child);
    }

    fn wait_amqp(&self, i: usize, deadline: Instant) {
        let node = &self.nodes[i];
        while !port_open(node.amqp_port) {
            if Instant::now() > deadline {
                let out = std::fs::read_to_string(node.dir.join("server.out")).unwrap_or_default();
                panic!(
                    "RabbitMQ node {} did not open port {} within 60 s:\n{out}",
                    node.name, node.amqp_port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rabbitmqctl -n <node i> args…`; panics with its output on failure.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let mut cmd = Command::new("sh");
        cmd.arg(self.sbin.join("rabbitmqctl"))
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args);
        self.env(i, &mut cmd);
        let out = cmd.output().expect("run rabbitmqctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {stdout}{}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The running nodes as node `i` sees them.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self.ctl(i, &["cluster_status", "--formatter", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("cluster_status is not JSON ({e}): {out}");
        });
        v["running_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Client connections open on node `i`.
    pub fn connections(&self, i: usize) -> usize {
        self.ctl(
            i,
            &["list_connections", "--silent", "--no-table-headers", "pid"],
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
    }

    /// SIGKILL node `i`'s Erlang VM: no goodbye to clients or peers.
    pub fn kill(&mut self, i: usize) {
        let pids = self.nodes[i].beam_pids();
        assert!(
            !pids.is_empty(),
            "no Erlang VM found for {}",
            self.nodes[i].name
        );
        for pid in pids {
            sigkill(pid);
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.wait();
        }
    }
}

fn sigkill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            for pid in node.beam_pids() {
                sigkill(pid);
            }
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The nodes' epmd registrations end with their VMs; the temp dir goes with `root`.
    }
}
