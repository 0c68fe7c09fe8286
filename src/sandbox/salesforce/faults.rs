//! Fault controls of the sandbox org and the gate every REST call passes
//! (shared machinery in `crate::sandbox::faults`).

use std::time::Duration;

use chrono::Utc;

use super::schema::err;
use super::Org;
use crate::salesforce::SfError;
use crate::sandbox::faults::SandboxFault;

/// Injected failures for the next N REST calls (token requests are never affected).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// 503 `SERVER_UNAVAILABLE`.
    Unavailable,
    /// 403 `REQUEST_LIMIT_EXCEEDED`.
    RequestLimit,
    /// 400 `UNABLE_TO_LOCK_ROW`.
    UnableToLock,
    /// Answer only after this long (trips client timeouts); then the call proceeds.
    Timeout(Duration),
}

impl SandboxFault for Fault {
    fn hold(&self) -> Option<Duration> {
        match self {
            Fault::Timeout(d) => Some(*d),
            _ => None,
        }
    }
}

impl Fault {
    /// The error Salesforce answers for this fault (`None`: the call is served).
    fn error(self) -> Option<SfError> {
        Some(match self {
            Fault::Unavailable => err(
                503,
                "SERVER_UNAVAILABLE",
                "Server temporarily unavailable (injected)",
                &[],
            ),
            Fault::RequestLimit => err(
                403,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded. (injected)",
                &[],
            ),
            Fault::UnableToLock => err(
                400,
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record (injected)",
                &[],
            ),
            Fault::Timeout(_) => return None,
        })
    }
}

impl Org {
    /// The next `n` REST calls fail with `fault` (`n = 0` clears).
    pub fn fail_next(&self, n: u32, fault: Fault) {
        self.state.lock().unwrap().faults.fail_next(n, fault);
    }

    /// The next `n` write calls over HTTP (anything but GET) are held for `hold` and then
    /// applied, whether or not the client is still waiting — as Salesforce finishes a request
    /// whose client timed out. With a hold longer than the client's timeout, the client sees
    /// a timeout and the write lands later (`n = 0` clears).
    pub fn hold_next_writes(&self, n: u32, hold: Duration) {
        self.state.lock().unwrap().held_writes = (n > 0).then_some((n, hold));
    }

    /// The next `n` Collections writes of records under `parent` (an Account or Contact id)
    /// fail with a per-record `UNABLE_TO_LOCK_ROW`, as when another transaction holds the
    /// parent's lock; the other records of the same call are written.
    pub fn lock_parent(&self, parent: &str, n: u32) {
        self.state
            .lock()
            .unwrap()
            .locked_parents
            .insert(parent.to_string(), n);
    }

    /// Take a due write hold.
    pub(super) fn take_write_hold(&self) -> Option<Duration> {
        let mut s = self.state.lock().unwrap();
        let (n, d) = s.held_writes?;
        s.held_writes = (n > 1).then_some((n - 1, d));
        Some(d)
    }

    /// Injected faults not yet consumed.
    pub fn faults_pending(&self) -> u32 {
        self.state.lock().unwrap().faults.pending()
    }

    /// Every REST call waits this long before it is served.
    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().faults.set_latency(d);
    }

    /// The gate of every REST call, in-process or over HTTP: count the call per
    /// endpoint and against the daily API limit, wait out latency, answer a due fault.
    pub(super) async fn enter(&self, endpoint: String) -> Result<(), SfError> {
        let admission = {
            let mut s = self.state.lock().unwrap();
            *s.counts.entry(endpoint).or_default() += 1;
            let today = Utc::now().date_naive();
            if s.api_day != Some(today) {
                s.api_day = Some(today);
                s.api_used = 0;
            }
            s.api_used += 1;
            s.faults.admit()
        };
        match admission.wait().await.and_then(Fault::error) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `Sforce-Limit-Info` value: `api-usage=N/M`.
    pub(super) fn limit_info(&self) -> String {
        let s = self.state.lock().unwrap();
        format!("api-usage={}/{}", s.api_used, s.api_limit)
    }
}
