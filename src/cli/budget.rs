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

/// Salesforce's data-skew threshold: more Contacts than this under one Account slow sharing
/// recalculation and lock the Account on every child write.
pub const DATA_SKEW_CONTACTS: u64 = 10_000;

/// Rule `default` (R4 A) puts every Contact under one Account: warn when it already holds
/// more than [`DATA_SKEW_CONTACTS`] (one SOQL `COUNT()`).
pub async fn data_skew(
    sf: &crate::salesforce::Client,
    sync: &crate::config::SyncSettings,
) -> Option<String> {
    if sync.account_rule != crate::config::AccountRule::Default {
        return None;
    }
    let id = sync.default_account_id.trim();
    let q = format!(
        "SELECT COUNT() FROM Contact WHERE AccountId = {}",
        crate::salesforce::soql::quote(id)
    );
    match sf.count_query(&q).await {
        Ok(n) if n > DATA_SKEW_CONTACTS => Some(format!(
            "sync.default_account_id: Account {id} already holds {n} Contacts, over Salesforce's data-skew threshold of {DATA_SKEW_CONTACTS}: \
             every Contact syncback creates goes under it, so writes will contend for its lock (UNABLE_TO_LOCK_ROW) and sharing \
             recalculations slow down — consider account_rule = \"department\" or \"learner_field\" to spread Contacts over Accounts"
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "could not count the Contacts of sync.default_account_id {id} (data-skew check): {e}"
        )),
    }
}

/// `backfill`'s progress bar: total, rate and ETA, the department being walked, and the
/// budget governor's pauses.
pub struct BackfillBar {
    bar: ProgressBar,
    budget_view: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl BackfillBar {
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix}{bar:30} {pos}/{len} learners ({per_sec}, eta {eta}) {msg}",
            )
            .expect("static template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Self {
            bar,
            budget_view: std::sync::Mutex::new(None),
        }
    }
}

impl Default for BackfillBar {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::sync::backfill::Progress for BackfillBar {
    fn start(&self, total: u64, done: u64) {
        self.bar.set_length(total.max(done));
        self.bar.set_position(done);
        self.bar.reset_eta();
    }
    fn department(&self, name: &str, index: usize, of: usize) {
        self.bar
            .set_message(format!("department {name} ({index}/{of})"));
    }
    fn advance(&self, done: u64) {
        if done > self.bar.length().unwrap_or(0) {
            self.bar.set_length(done);
        }
        self.bar.set_position(done);
    }
    fn finish(&self) {
        if let Some(v) = self.budget_view.lock().unwrap().take() {
            v.abort();
        }
        self.bar.finish_and_clear();
    }
    fn budget(&self, status: watch::Receiver<BudgetStatus>) {
        *self.budget_view.lock().unwrap() = Some(show_on(self.bar.clone(), Priority::Bulk, status));
    }
}
