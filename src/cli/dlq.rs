//! `syncback dlq list|show|replay|purge` (R13).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::DlqCmd;
use crate::config::{Role, Settings};
use crate::queue::{self, DeadLetter, DlqFilter};

pub async fn run(settings: Settings, cmd: DlqCmd) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Dlq)?;
    let q = queue::connect(&settings.queue)
        .await
        .context("connecting to the broker (queue.url)")?;
    let result = command(q.as_ref(), cmd).await;
    q.close().await;
    result
}

async fn command(q: &dyn queue::Queue, cmd: DlqCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCmd::List(a) => {
            let filter = DlqFilter {
                reason: a.reason,
                event_type: a.event_type,
                ..Default::default()
            };
            let bar = spinner("reading the dead-letter queue");
            let all = q.dlq_list().await;
            bar.finish_and_clear();
            let all = all?;
            let shown: Vec<&DeadLetter> = all.iter().filter(|d| filter.matches(d)).collect();
            if a.json {
                for d in &shown {
                    println!("{}", serde_json::to_string(d)?);
                }
            } else {
                print_table(&shown);
                println!("{} of {} dead letters shown", shown.len(), all.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Show { id } => {
            let all = q.dlq_list().await?;
            match all.iter().find(|d| d.message.webhook_id == id) {
                Some(d) => {
                    println!("{}", serde_json::to_string_pretty(d)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no dead letter with id {id}");
                    Ok(super::exit::code(super::exit::NOT_FOUND))
                }
            }
        }
        DlqCmd::Replay(a) => {
            let filter = DlqFilter {
                id: a.id,
                reason: a.reason,
                ..Default::default()
            };
            let all = q.dlq_list().await?;
            let matching: Vec<&DeadLetter> = all.iter().filter(|d| filter.matches(d)).collect();
            if a.dry_run {
                print_table(&matching);
                println!("dry run: {} dead letters would be replayed", matching.len());
                return Ok(ExitCode::SUCCESS);
            }
            let bar = ProgressBar::new(matching.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "replaying {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
                )
                .expect("static template"),
            );
            let progress = |n: u64| bar.set_position(n);
            let n = q.dlq_replay(&filter, &progress).await?;
            bar.finish_and_clear();
            println!("replayed {n} dead letters onto the work queue (attempts reset)");
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Purge(a) => {
            let filter = DlqFilter {
                id: a.id,
                reason: a.reason,
                ..Default::default()
            };
            let bar = spinner("reading the dead-letter queue");
            let listed = q.dlq_list().await;
            bar.finish_and_clear();
            let count = listed?.iter().filter(|d| filter.matches(d)).count();
            if count == 0 {
                println!("nothing to purge");
                return Ok(ExitCode::SUCCESS);
            }
            if !a.yes && !confirm(&format!("Delete {count} dead letters for good? [y/N] "))? {
                println!("aborted");
                return Ok(ExitCode::FAILURE);
            }
            let bar = spinner(&format!("deleting {count} dead letters"));
            let n = q.dlq_purge(&filter).await;
            bar.finish_and_clear();
            let n = n?;
            println!("purged {n} dead letters");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A spinner on stderr (drawn only on a terminal) while a DLQ-wide call runs: the queue
/// API reports no progress for listing and purging, so this shows the time it takes.
fn spinner(what: &str) -> ProgressBar {
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("static template"),
    );
    b.set_message(what.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

fn confirm(prompt: &str) -> anyhow::Result<bool> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

fn print_table(rows: &[&DeadLetter]) {
    println!(
        "{:<28} {:<24} {:<20} {:>8} {:<14} {:<25} message",
        "id", "type", "reason", "attempts", "learner", "last failure"
    );
    for d in rows {
        println!(
            "{:<28} {:<24} {:<20} {:>8} {:<14} {:<25} {}",
            d.message.webhook_id,
            d.message.event_type().unwrap_or("?"),
            d.reason_kind,
            d.attempts,
            d.learner_id.as_deref().unwrap_or("-"),
            d.last_failure_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            d.reason_message
        );
    }
}
