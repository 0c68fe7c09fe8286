//! The Salesforce API budget governor on a progress bar (README "Salesforce API budget").

use indicatif::ProgressBar;
use tokio::sync::watch;

use crate::salesforce::budget::{BudgetStatus, GateState, Priority};

/// Show pauses of `priority` on `bar` until the returned task is aborted: a line when work
/// pauses (why, since when, usage against the ceiling) and when it resumes, and the bar's
/// `{prefix}` says "paused" meanwhile.
pub fn show_on(
    bar: ProgressBar,
    priority: Priority,
    mut rx: watch::Receiver<BudgetStatus>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut paused = false;
        loop {
            let st = rx.borrow_and_update().clone();
            let now = st.gate(priority).state == GateState::Paused;
            if now != paused {
                paused = now;
                if let Some(why) = st.explain(priority).filter(|_| now) {
                    bar.println(format!("⏸  Salesforce budget: {why}"));
                    bar.set_prefix("⏸ paused (Salesforce API budget) ");
                } else {
                    bar.println(format!(
                        "▶  Salesforce budget: resumed — {}",
                        st.usage_line()
                    ));
                    bar.set_prefix("");
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}
