//! The `syncback` command line (docs/rules.md "Flow"): `receive`, `work`, `run`, `dlq …`,
//! `learner status`, `backfill`, `config check`, `demo`, `sandbox …`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{LogFormat, Role, Settings};

pub mod budget;
mod check;
mod commands;
mod console;
pub mod demo;
mod dlq;
pub mod exit;
mod health;
pub mod reconcile;
mod sandbox;
pub mod send;
mod stores;

#[derive(Debug, Parser)]
#[command(
    name = "syncback",
    version,
    about = "Keeps Salesforce Contacts in step with SkillSync Learners",
    after_help = exit::HELP
)]
pub struct Cli {
    /// TOML configuration file; every key can be overridden as SYNCBACK_SECTION__KEY.
    #[arg(
        long,
        short,
        global = true,
        env = "SYNCBACK_CONFIG",
        default_value = "syncback.toml"
    )]
    pub config: PathBuf,
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Options of the long-running commands.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct StartArgs {
    /// Give up (exit 1) when the broker or the store is still unreachable after this many
    /// seconds. Without it the process waits for them as long as it takes, retrying with
    /// backoff and reporting not-ready on /readyz.
    #[arg(long, value_name = "SECS")]
    pub wait_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver (server, webhooks, queue).
    Receive(StartArgs),
    /// Run a worker process (queue, store, salesforce, skillsync, sync, worker).
    Work(StartArgs),
    /// Receiver and workers in one process.
    Run(StartArgs),
    /// Inspect and replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
    /// Per-learner state.
    Learner {
        #[command(subcommand)]
        cmd: LearnerCmd,
    },
    /// The mapping in force (the Data Mapping page): show it, or change it (`console` mode).
    Mapping {
        #[command(subcommand)]
        cmd: MappingCmd,
    },
    /// Admin console tools.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Find drift between SkillSync, the store and Salesforce, and repair it through the
    /// same apply path as events. Exit code: 0 in sync (or all repaired), 6 drift remains,
    /// 7 repairs failed.
    Reconcile(reconcile::ReconcileArgs),
    /// Sync every in-scope learner in batches (for turning the sync on for an existing
    /// department). Exit code 5 when some learners failed.
    Backfill {
        /// Print the plan without writing to Salesforce.
        #[arg(long)]
        dry_run: bool,
        /// Ignore the saved checkpoint and start from the beginning.
        #[arg(long)]
        restart: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The whole flow in one process with no outside services (in-memory queue, SQLite,
    /// built-in Salesforce and SkillSync sandboxes), walking through every rule.
    Demo(demo::DemoArgs),
    /// Sign a sample event (or --file) with a webhook secret and post it to a receiver,
    /// as SkillSync would (try it against `demo --keep-running`).
    Send(send::SendArgs),
    /// Probe this host's /healthz (or /readyz) as a container HEALTHCHECK would: the port
    /// of worker.listen when set, else server.listen. Exit 0 when it answers 200.
    Health(health::HealthArgs),
    /// Serve a built-in sandbox over HTTP (for manual testing; needs no configuration).
    Sandbox {
        #[command(subcommand)]
        cmd: SandboxCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters (queue order; nothing is removed).
    List(DlqListArgs),
    /// Show one dead letter in full.
    Show {
        /// The event (webhook) id.
        id: String,
    },
    /// Put dead letters back on the work queue (attempts reset).
    Replay(DlqReplayArgs),
    /// Delete dead letters.
    Purge(DlqPurgeArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Only this reason kind (e.g. account_not_found).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this event type (e.g. learner.updated).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// JSON lines (one dead letter per line) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all", "reason"])))]
pub struct DlqReplayArgs {
    /// Replay only the dead letter with this event (webhook) id.
    #[arg(long)]
    pub id: Option<String>,
    /// Replay every dead letter.
    #[arg(long)]
    pub all: bool,
    /// Replay only dead letters of this reason kind (e.g. account_not_found).
    #[arg(long)]
    pub reason: Option<String>,
    /// Show what would be replayed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Delete only dead letters of this reason kind (default: all of them).
    #[arg(long)]
    pub reason: Option<String>,
    /// Delete only the dead letter with this event (webhook) id.
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LearnerCmd {
    /// The learner's link, Contact, and last events with their outcomes.
    Status {
        /// The SkillSync learner id.
        id: String,
        /// The learner's state and events as one JSON document.
        #[arg(long)]
        json: bool,
        /// How many recent events to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Fetch the learner's SkillSync snapshot and apply it through the normal rules now.
    Resync {
        /// The SkillSync learner id.
        id: String,
        /// Who to record in the audit log (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Link the learner to a Contact (resolving `contact_ambiguous`): apply its SkillSync
    /// snapshot through the rules with that Contact as R5's single match, then replay its
    /// dead letters.
    Link {
        /// The SkillSync learner id.
        id: String,
        /// The Salesforce Contact Id.
        #[arg(long)]
        contact: String,
        /// Who to record in the audit log (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingCmd {
    /// Print the mapping in force (and its version in `console` mode).
    Show {
        /// The mapping as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change keys of the mapping (`sync.managed_by = "console"`), validated against
    /// SkillSync and Salesforce like the console's Save, e.g.
    /// `mapping set account_rule=default default_account_id=001…`.
    Set {
        /// `key=value` pairs: enabled, source_department_id, scope, account_rule,
        /// default_account_id, account_field, match_field, field_map ("A = b; C = d").
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Who to record in the audit log (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Read a password on stdin and print its Argon2id hash for `[[admin.users]]`.
    HashPassword,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate the configuration; also checks the broker, store, Salesforce and the source
    /// department in SkillSync (R2) unless --offline.
    Check {
        /// Which process the configuration is for.
        #[arg(long, value_enum, default_value_t = RoleArg::Run)]
        role: RoleArg,
        /// Static checks only.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Receive,
    Work,
    Run,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Receive => Role::Receive,
            RoleArg::Work => Role::Work,
            RoleArg::Run => Role::Run,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Serve the Salesforce sandbox (credentials sandbox-client / sandbox-secret).
    Salesforce {
        /// Address to serve on (0.0.0.0:8081 in a container).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Start without the sample Accounts (Engineering, Sales, Prospects).
        #[arg(long)]
        empty: bool,
        /// Answer every REST call after this many milliseconds (a real org takes 50–300 ms).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// The org's daily API limit reported in `Sforce-Limit-Info` and `/limits`.
        #[arg(long, default_value_t = 15_000)]
        api_limit: u64,
    },
    /// Serve the SkillSync sandbox (credentials sandbox-client / sandbox-secret).
    Skillsync {
        /// Address to serve on (0.0.0.0:8082 in a container).
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: String,
        /// Start without the sample departments (42 Engineering → 43 Sales, 44 Research;
        /// 99 Outside), learners, enrollments and certifications.
        #[arg(long)]
        empty: bool,
        /// Also send each write through the API (POST /api/v1/learners, …) as a signed
        /// webhook to this URL, e.g. http://127.0.0.1:8080/webhooks/skillsync.
        #[arg(long, requires = "webhook_secret")]
        webhook_url: Option<String>,
        /// The `whsec_…` secret that signs those webhooks (one of `webhooks.secrets`).
        #[arg(long, requires = "webhook_url")]
        webhook_secret: Option<String>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::failure()
        }
    }
}

/// Was a configuration file named (`--config`/`-c` or `SYNCBACK_CONFIG`)?
fn config_named() -> bool {
    std::env::args().any(|a| a == "--config" || a == "-c" || a.starts_with("--config="))
        || std::env::var_os("SYNCBACK_CONFIG").is_some()
}

/// `demo` and `sandbox` bring their own configuration: a file named with `--config` is
/// not read, and both say so the same way (an ambient `SYNCBACK_CONFIG`, as in the
/// container image, is silently not used).
fn note_config_unused(cli: &Cli, what: &str) {
    let flag = std::env::args().any(|a| a == "--config" || a == "-c" || a.starts_with("--config="));
    if flag {
        eprintln!(
            "note: `{what}` uses no configuration file; {} is not read",
            cli.config.display()
        );
    }
}

/// Load settings for a command (the file is optional: defaults + environment suffice).
fn load(cli: &Cli) -> anyhow::Result<Settings> {
    let explicit = config_named();
    if !explicit && !cli.config.exists() {
        eprintln!(
            "note: no {} here; using defaults and SYNCBACK_* environment variables (see deploy/syncback.example.toml)",
            cli.config.display()
        );
    }
    let mut s = Settings::load(&cli.config, explicit)?;
    if let Some(f) = cli.log_format {
        s.log.format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    Ok(s)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Needs no configuration at all.
    if let Command::Admin {
        cmd: AdminCmd::HashPassword,
    } = &cli.command
    {
        return console::hash_password();
    }
    // The sandboxes need no configuration.
    if let Command::Sandbox { .. } = &cli.command {
        note_config_unused(&cli, "sandbox");
        let Command::Sandbox { cmd } = cli.command else {
            unreachable!()
        };
        crate::telemetry::init_logging(&crate::config::LogSettings::default());
        return sandbox::sandbox(cmd).await;
    }
    // The demo brings its own configuration.
    if let Command::Demo(args) = &cli.command {
        note_config_unused(&cli, "demo");
        let mut log = crate::config::LogSettings::default();
        if matches!(cli.log_format, Some(LogFormatArg::Json)) {
            log.format = LogFormat::Json;
        }
        log.level = args.log_level.clone();
        crate::telemetry::init_logging(&log);
        return demo::run(args).await.map(|_| ExitCode::SUCCESS);
    }
    let settings = load(&cli)?;
    crate::telemetry::init_logging(&settings.log);
    match cli.command {
        Command::Receive(a) => commands::receive(settings, a).await,
        Command::Work(a) => commands::work(settings, a).await,
        Command::Run(a) => commands::run_all(settings, a).await,
        Command::Dlq { cmd } => dlq::run(settings, cmd).await,
        Command::Learner {
            cmd: LearnerCmd::Status { id, json, limit },
        } => commands::learner_status(settings, &id, json, limit).await,
        Command::Learner {
            cmd: LearnerCmd::Resync { id, actor },
        } => console::learner_resync(settings, &id, actor).await,
        Command::Learner {
            cmd: LearnerCmd::Link { id, contact, actor },
        } => console::learner_link(settings, &id, &contact, actor).await,
        Command::Mapping { cmd } => console::mapping(settings, cmd).await,
        Command::Admin { .. } => unreachable!("handled above"),
        Command::Backfill { dry_run, restart } => {
            commands::backfill(settings, dry_run, restart).await
        }
        Command::Config {
            cmd: ConfigCmd::Check { role, offline },
        } => check::config_check(settings, role.into(), offline).await,
        Command::Health(args) => health::run(&settings, &args).await,
        Command::Sandbox { .. } => unreachable!("handled above"),
        Command::Send(args) => send::run(&settings, &args).await,
        Command::Reconcile(args) => reconcile::run(settings, args, None).await,
        Command::Demo(_) => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every flag and argument of every subcommand says what it is in `--help`.
    #[test]
    fn every_argument_has_help_text() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "syncback", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn spec_subcommands_parse() {
        for args in [
            vec!["syncback", "receive"],
            vec!["syncback", "work"],
            vec!["syncback", "run"],
            vec![
                "syncback",
                "dlq",
                "list",
                "--reason",
                "account_not_found",
                "--json",
            ],
            vec!["syncback", "dlq", "show", "evt_1"],
            vec!["syncback", "dlq", "replay", "--all", "--dry-run"],
            vec!["syncback", "dlq", "replay", "--reason", "account_not_found"],
            vec!["syncback", "dlq", "purge", "--yes"],
            vec!["syncback", "learner", "status", "L1"],
            vec!["syncback", "learner", "resync", "L1"],
            vec![
                "syncback",
                "learner",
                "link",
                "L1",
                "--contact",
                "003000000000001",
            ],
            vec!["syncback", "mapping", "show"],
            vec!["syncback", "mapping", "set", "scope=department_only"],
            vec!["syncback", "admin", "hash-password"],
            vec!["syncback", "backfill", "--dry-run"],
            vec![
                "syncback",
                "reconcile",
                "--learner",
                "L1",
                "--learner",
                "L2",
                "--dry-run",
                "--json",
                "--csv",
                "drift.csv",
            ],
            vec!["syncback", "reconcile", "--department", "43"],
            vec!["syncback", "config", "check"],
            vec![
                "syncback",
                "--config",
                "x.toml",
                "config",
                "check",
                "--offline",
            ],
            vec!["syncback", "demo"],
            vec![
                "syncback",
                "send",
                "--type",
                "learner.updated",
                "--learner",
                "L7",
            ],
            vec![
                "syncback",
                "sandbox",
                "salesforce",
                "--listen",
                "127.0.0.1:0",
            ],
        ] {
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // replay needs a selector.
        assert!(Cli::try_parse_from(["syncback", "dlq", "replay"]).is_err());
    }
}
