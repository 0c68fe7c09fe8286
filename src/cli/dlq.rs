//! `syncback dlq list|show|replay|purge` (R13).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use super::DlqCmd;
use crate::config::{Role, Settings};
use crate::queue::{self, DeadLetter, DlqFilter, DlqProgress};

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
            let all = list(q).await?;
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
            let all = list(q).await?;
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
            let all = list(q).await?;
            let matching: Vec<&DeadLetter> = all.iter().filter(|d| filter.matches(d)).collect();
            if a.dry_run {
                print_table(&matching);
                println!("dry run: {} dead letters would be replayed", matching.len());
                return Ok(ExitCode::SUCCESS);
            }
            let bar = ProgressBar::new(matching.len() as u64);
            bar.set_style(bar_style());
            bar.set_message("replaying");
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
            let count = list(q).await?.iter().filter(|d| filter.matches(d)).count();
            if count == 0 {
                println!("nothing to purge");
                return Ok(ExitCode::SUCCESS);
            }
            if !a.yes && !confirm(&format!("Delete {count} dead letters for good? [y/N] "))? {
                println!("aborted");
                return Ok(ExitCode::FAILURE);
            }
            let bar = dlq_bar(&format!("deleting {count} dead letters"));
            let progress = |p: DlqProgress| {
                follow(&bar, p);
                bar.set_message(format!("deleting: {} of {count} removed", p.removed));
            };
            let n = q.dlq_purge(&filter, &progress).await;
            bar.finish_and_clear();
            let n = n?;
            println!("purged {n} dead letters");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every dead letter, with a bar while the DLQ is read.
async fn list(q: &dyn queue::Queue) -> anyhow::Result<Vec<DeadLetter>> {
    let bar = dlq_bar("reading the dead-letter queue");
    let all = q.dlq_list_with_progress(&|p| follow(&bar, p)).await;
    bar.finish_and_clear();
    Ok(all?)
}

/// A bar on stderr following a DLQ-wide call (indicatif draws it only when stderr is a
/// terminal, so `--json` on stdout stays clean): a spinner with the count until the
/// backend reports the total, then count/total, rate and ETA.
fn dlq_bar(what: &str) -> ProgressBar {
    let b = ProgressBar::no_length();
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} ({elapsed})")
            .expect("static template"),
    );
    b.set_message(what.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

/// Move `bar` to `p`, switching to a bar with count/total, rate and ETA once the total is known.
fn follow(bar: &ProgressBar, p: DlqProgress) {
    if let Some(total) = p.total {
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(bar_style());
        }
    }
    bar.set_position(p.seen);
}

/// `{msg} [bar to the terminal's width] count/total (rate/s, eta …)`.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} {wide_bar} {human_pos}/{human_len} ({rate}, eta {eta})")
        .expect("static template")
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", s.per_sec());
        })
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
