//! The Salesforce API budget governor (docs/rules.md "Salesforce").
//!
//! Salesforce's daily API allocation (a rolling 24 h window, reported on every answer as
//! `Sforce-Limit-Info: api-usage=N/M`) is shared by every integration of the org. syncback
//! never pushes the org's usage past `salesforce.max_api_share` of `M` by itself:
//!
//! | usage, as a share of the ceiling `C = max_api_share × M` | bulk (backfill, reconcile) | live (webhook events) |
//! |---|---|---|
//! | below 90 %                  | runs                              | runs                      |
//! | 90 % – 100 %                | **paused** (resumes below 85 %)   | slowed: each call waits up to 2 s, growing with usage |
//! | 100 % and above             | paused                            | **paused** (resumes below 100 %) |
//!
//! Live events are never dropped or dead-lettered for the budget: their calls wait. While a
//! priority is paused, one cheap call (`GET /limits`) every `salesforce.budget_poll_ms`
//! re-reads the usage, so work resumes as the rolling window frees up; that poll is the only
//! call syncback makes past the ceiling. Usage is known from the last answer plus the calls
//! admitted since (so concurrent callers cannot overshoot together). Until the first answer
//! (or for an org that sends no `Sforce-Limit-Info`) the governor lets every call through.
//!
//! The [`Budget`] is shared by all clones of one [`super::Client`]; each clone carries a
//! [`Priority`]. Its [`BudgetStatus`] is watchable (`backfill`'s progress bar, the admin
//! console) and exported as metrics (README "Operations").

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::telemetry;

/// Bulk work pauses at this share of the ceiling…
pub const BULK_PAUSE_AT: f64 = 0.90;
/// …and resumes below this one.
pub const BULK_RESUME_BELOW: f64 = 0.85;
/// Live calls are paced from this share of the ceiling…
pub const LIVE_SLOW_FROM: f64 = 0.90;
/// …by up to this much per call…
pub const LIVE_MAX_PACE: Duration = Duration::from_secs(2);
/// …and wait from this share on (resuming as soon as usage is below it).
pub const LIVE_PAUSE_AT: f64 = 1.0;

/// Who is asking: live events go before bulk work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Webhook events applied by workers: slowed, then paused at the ceiling.
    Live,
    /// `backfill` and `reconcile`: paused first.
    Bulk,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Live => "live",
            Priority::Bulk => "bulk",
        }
    }
}

/// The state of one priority's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    Open,
    /// Calls go through after a short wait (live only).
    Slowed,
    /// Calls wait until usage falls.
    Paused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Gate {
    pub state: GateState,
    /// When the gate left `Open` (UTC).
    pub since: Option<DateTime<Utc>>,
}

impl Gate {
    const OPEN: Gate = Gate {
        state: GateState::Open,
        since: None,
    };
}

/// What the governor knows and decides; watch it with [`Budget::subscribe`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetStatus {
    /// API calls used in the org's rolling 24 h (last answer + calls admitted since).
    pub used: Option<u64>,
    /// The org's daily limit (`M`).
    pub limit: Option<u64>,
    /// `salesforce.max_api_share`.
    pub max_share: f64,
    pub bulk: Gate,
    pub live: Gate,
    /// When usage was last read from Salesforce.
    pub observed_at: Option<DateTime<Utc>>,
}

impl BudgetStatus {
    /// `max_share × limit`: the most syncback lets the org's usage reach.
    pub fn ceiling(&self) -> Option<u64> {
        self.limit
            .map(|m| (self.max_share * m as f64).floor() as u64)
    }

    /// Usage as a share of the ceiling (1.0 = at the ceiling).
    pub fn fraction(&self) -> Option<f64> {
        let (used, ceiling) = (self.used?, self.ceiling()?);
        Some(if ceiling == 0 {
            f64::INFINITY
        } else {
            used as f64 / ceiling as f64
        })
    }

    pub fn gate(&self, p: Priority) -> Gate {
        match p {
            Priority::Live => self.live,
            Priority::Bulk => self.bulk,
        }
    }

    /// One line for people: `Salesforce API 4,600/10,000 used (ceiling 5,000 = max_api_share 0.5)`.
    pub fn usage_line(&self) -> String {
        match (self.used, self.limit, self.ceiling()) {
            (Some(u), Some(m), Some(c)) => format!(
                "Salesforce API {}/{} used in the last 24 h (syncback's ceiling {} = salesforce.max_api_share {} of the limit)",
                thousands(u),
                thousands(m),
                thousands(c),
                self.max_share
            ),
            _ => "Salesforce API usage not known yet".into(),
        }
    }

    /// Why `p` is not running at full speed, or `None` when its gate is open.
    pub fn explain(&self, p: Priority) -> Option<String> {
        let g = self.gate(p);
        let since = g
            .since
            .map(|t| format!(" since {}", t.format("%H:%M:%S UTC")))
            .unwrap_or_default();
        let what = match (p, g.state) {
            (_, GateState::Open) => return None,
            (Priority::Bulk, _) => format!(
                "paused{since}: bulk work waits until usage is below {:.0}% of the ceiling",
                BULK_RESUME_BELOW * 100.0
            ),
            (Priority::Live, GateState::Slowed) => {
                format!("live calls slowed{since}: usage is close to the ceiling")
            }
            (Priority::Live, GateState::Paused) => {
                format!("live calls waiting{since}: usage is at the ceiling (events are kept, not dropped)")
            }
        };
        Some(format!("{what} — {}", self.usage_line()))
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a caller must do before its call.
#[derive(Debug, PartialEq)]
enum Admit {
    Go,
    Pace(Duration),
    Wait,
}

/// The governor. One per Salesforce client (its clones share it).
pub struct Budget {
    poll_every: Duration,
    state: Mutex<Inner>,
    tx: watch::Sender<BudgetStatus>,
    /// Held by the one waiter that polls `/limits`.
    poller: tokio::sync::Mutex<()>,
}

struct Inner {
    status: BudgetStatus,
    observed: Option<Instant>,
}

impl Budget {
    /// `max_share` in (0, 1] (validated as `salesforce.max_api_share`); `poll_every` is how
    /// often usage is re-read while a caller waits.
    pub fn new(max_share: f64, poll_every: Duration) -> Budget {
        let status = BudgetStatus {
            used: None,
            limit: None,
            max_share,
            bulk: Gate::OPEN,
            live: Gate::OPEN,
            observed_at: None,
        };
        for p in [Priority::Live, Priority::Bulk] {
            metrics::gauge!(telemetry::SF_BUDGET_PAUSED, "priority" => p.as_str()).set(0.0);
            metrics::counter!(telemetry::SF_BUDGET_PAUSED_SECONDS, "priority" => p.as_str())
                .increment(0);
        }
        Budget {
            poll_every: poll_every.max(Duration::from_millis(10)),
            state: Mutex::new(Inner {
                status: status.clone(),
                observed: None,
            }),
            tx: watch::Sender::new(status),
            poller: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self) -> BudgetStatus {
        self.state.lock().unwrap().status.clone()
    }

    /// Changes of [`BudgetStatus`] (gate transitions and usage read from Salesforce).
    pub fn subscribe(&self) -> watch::Receiver<BudgetStatus> {
        self.tx.subscribe()
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_every
    }

    /// Usage read from an answer (`Sforce-Limit-Info`) or from `GET /limits`.
    pub fn observe(&self, used: u64, limit: u64) {
        let mut st = self.state.lock().unwrap();
        st.status.used = Some(used);
        st.status.limit = Some(limit);
        st.status.observed_at = Some(Utc::now());
        st.observed = Some(Instant::now());
        self.regate(&mut st);
        let snapshot = st.status.clone();
        drop(st);
        self.tx.send_replace(snapshot);
    }

    /// Recompute both gates from usage (with the hysteresis of the table above).
    fn regate(&self, st: &mut Inner) {
        let Some(f) = st.status.fraction() else {
            return;
        };
        let bulk = match st.status.bulk.state {
            GateState::Open if f >= BULK_PAUSE_AT => GateState::Paused,
            GateState::Paused if f < BULK_RESUME_BELOW => GateState::Open,
            s => s,
        };
        let live = if f >= LIVE_PAUSE_AT {
            GateState::Paused
        } else if f >= LIVE_SLOW_FROM {
            GateState::Slowed
        } else {
            GateState::Open
        };
        let line = st.status.usage_line();
        for (p, new) in [(Priority::Bulk, bulk), (Priority::Live, live)] {
            let gate = match p {
                Priority::Bulk => &mut st.status.bulk,
                Priority::Live => &mut st.status.live,
            };
            if gate.state == new {
                continue;
            }
            let was = gate.state;
            gate.state = new;
            gate.since = (new != GateState::Open).then(Utc::now);
            metrics::gauge!(telemetry::SF_BUDGET_PAUSED, "priority" => p.as_str())
                .set(if new == GateState::Paused { 1.0 } else { 0.0 });
            match (p, new) {
                (Priority::Bulk, GateState::Paused) => {
                    tracing::warn!("salesforce budget: bulk work paused — {line}")
                }
                (Priority::Live, GateState::Paused) => {
                    tracing::warn!("salesforce budget: live calls wait — {line}")
                }
                (Priority::Live, GateState::Slowed) if was == GateState::Open => {
                    tracing::info!("salesforce budget: live calls slowed — {line}")
                }
                (_, GateState::Open) => {
                    tracing::info!(priority = p.as_str(), "salesforce budget: resumed — {line}")
                }
                _ => {}
            }
        }
    }

    /// Decide for one call; a call that goes is counted in the usage estimate at once.
    fn admit(&self, p: Priority) -> Admit {
        let mut st = self.state.lock().unwrap();
        let Some(f) = st.status.fraction() else {
            return Admit::Go;
        };
        let decision = match st.status.gate(p).state {
            GateState::Paused => return Admit::Wait,
            GateState::Open => Admit::Go,
            GateState::Slowed => {
                let over =
                    ((f - LIVE_SLOW_FROM) / (LIVE_PAUSE_AT - LIVE_SLOW_FROM)).clamp(0.0, 1.0);
                Admit::Pace(LIVE_MAX_PACE.mul_f64(over))
            }
        };
        // Count the call before it is made, so concurrent callers see it.
        if let Some(u) = st.status.used.as_mut() {
            *u += 1;
        }
        self.regate(&mut st);
        let changed =
            st.status.bulk != self.tx.borrow().bulk || st.status.live != self.tx.borrow().live;
        if changed {
            let snapshot = st.status.clone();
            drop(st);
            self.tx.send_replace(snapshot);
        }
        decision
    }

    /// Wait until a call of priority `p` may be made. While paused, `poll` (a cheap call that
    /// reports usage through [`Budget::observe`]) runs at most once per poll interval, by one
    /// waiter at a time. Time spent waiting is added to
    /// `syncback_salesforce_budget_paused_seconds_total{priority}`.
    pub async fn acquire<F, Fut>(&self, p: Priority, poll: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut rx = self.tx.subscribe();
        loop {
            match self.admit(p) {
                Admit::Go => return,
                Admit::Pace(d) => {
                    tokio::time::sleep(d).await;
                    count_waited(p, d);
                    return;
                }
                Admit::Wait => {}
            }
            let started = Instant::now();
            let due = {
                let st = self.state.lock().unwrap();
                st.observed
                    .map(|t| t + self.poll_every)
                    .unwrap_or_else(Instant::now)
            };
            if Instant::now() >= due {
                if let Ok(_guard) = self.poller.try_lock() {
                    poll().await;
                    // A failed poll does not refresh `observed`: wait a full interval anyway.
                    let stale = {
                        let st = self.state.lock().unwrap();
                        st.observed.is_none_or(|t| t < started)
                    };
                    if stale {
                        tokio::time::sleep(self.poll_every).await;
                    }
                    count_waited(p, started.elapsed());
                    continue;
                }
            }
            let wake = due.max(Instant::now() + Duration::from_millis(5));
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            count_waited(p, started.elapsed());
        }
    }
}

/// Add `d` to `syncback_salesforce_budget_paused_seconds_total{priority}`.
fn count_waited(p: Priority, d: Duration) {
    carry(p, d);
}

/// `metrics` counters count integers: feed whole seconds, carrying the sub-second
/// remainder per priority (process-wide, like the counter).
fn carry(p: Priority, d: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LIVE: AtomicU64 = AtomicU64::new(0);
    static BULK: AtomicU64 = AtomicU64::new(0);
    let cell = match p {
        Priority::Live => &LIVE,
        Priority::Bulk => &BULK,
    };
    let total = cell.fetch_add(d.as_micros() as u64, Ordering::Relaxed) + d.as_micros() as u64;
    let before = total - d.as_micros() as u64;
    let whole = total / 1_000_000 - before / 1_000_000;
    if whole > 0 {
        metrics::counter!(telemetry::SF_BUDGET_PAUSED_SECONDS, "priority" => p.as_str())
            .increment(whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn gates_follow_usage_with_hysteresis() {
        let b = Budget::new(0.5, Duration::from_secs(60));
        assert_eq!(b.admit(Priority::Bulk), Admit::Go, "unknown usage: no gate");
        b.observe(400, 1000); // ceiling 500: 80 %
        assert_eq!(b.status().ceiling(), Some(500));
        assert_eq!(b.status().bulk.state, GateState::Open);
        b.observe(450, 1000); // 90 %
        let s = b.status();
        assert_eq!(s.bulk.state, GateState::Paused);
        assert!(s.bulk.since.is_some());
        assert_eq!(s.live.state, GateState::Slowed);
        assert!(s.explain(Priority::Bulk).unwrap().contains("450/1,000"));
        b.observe(430, 1000); // 86 %: still paused (resumes below 85 %)
        assert_eq!(b.status().bulk.state, GateState::Paused);
        assert_eq!(b.status().live.state, GateState::Open);
        assert_eq!(b.status().explain(Priority::Live), None);
        b.observe(420, 1000); // 84 %
        assert_eq!(b.status().bulk.state, GateState::Open);
        assert_eq!(b.status().bulk.since, None);
        b.observe(500, 1000); // 100 %
        assert_eq!(b.status().live.state, GateState::Paused);
        assert_eq!(b.admit(Priority::Live), Admit::Wait);
        b.observe(499, 1000); // live resumes as soon as it is below the ceiling
        assert!(matches!(b.admit(Priority::Live), Admit::Pace(_)));
        // …and that call brought the estimate back to the ceiling.
        assert_eq!(b.admit(Priority::Live), Admit::Wait);
    }

    #[test]
    fn admitted_calls_count_before_their_answer() {
        let b = Budget::new(0.5, Duration::from_secs(60));
        b.observe(0, 100); // ceiling 50, bulk pauses at 45
        let went = (0..100)
            .take_while(|_| b.admit(Priority::Bulk) == Admit::Go)
            .count();
        assert_eq!(went, 45);
        assert_eq!(b.status().used, Some(45));
    }

    #[test]
    fn live_pace_grows_towards_the_ceiling() {
        let b = Budget::new(1.0, Duration::from_secs(60));
        b.observe(95, 100);
        match b.admit(Priority::Live) {
            Admit::Pace(d) => assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_paused_caller_polls_and_resumes_when_usage_drops() {
        let b = Arc::new(Budget::new(0.5, Duration::from_millis(30)));
        b.observe(95, 100); // over the ceiling: both wait
        let polls = Arc::new(AtomicU64::new(0));
        let org_usage = Arc::new(AtomicU64::new(95));
        let waiter = {
            let (b, polls, org_usage) = (b.clone(), polls.clone(), org_usage.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                b.acquire(Priority::Bulk, || async {
                    polls.fetch_add(1, Ordering::SeqCst);
                    b.observe(org_usage.load(Ordering::SeqCst), 100);
                })
                .await;
                t.elapsed()
            })
        };
        let mut rx = b.subscribe();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "bulk must wait over the ceiling");
        let p = polls.load(Ordering::SeqCst);
        assert!(
            (3..=8).contains(&p),
            "one poll per interval, not a busy loop: {p}"
        );
        assert_eq!(rx.borrow_and_update().bulk.state, GateState::Paused);
        org_usage.store(10, Ordering::SeqCst); // the rolling window freed up
        let waited = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("resumed")
            .unwrap();
        assert!(waited >= Duration::from_millis(200));
        assert_eq!(b.status().bulk.state, GateState::Open);
        assert_eq!(b.status().used, Some(11));
    }

    #[tokio::test]
    async fn only_one_waiter_polls_at_a_time() {
        let b = Arc::new(Budget::new(0.5, Duration::from_millis(40)));
        b.observe(60, 100);
        let polls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (b, polls) = (b.clone(), polls.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire(Priority::Live, || async {
                    polls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    b.observe(60, 100);
                })
                .await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(220)).await;
        let p = polls.load(Ordering::SeqCst);
        assert!(
            (3..=8).contains(&p),
            "8 waiters share one poll per interval: {p}"
        );
        b.observe(0, 100);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .expect("all resume")
                .unwrap();
        }
    }
}
