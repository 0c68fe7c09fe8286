//! Fault controls shared by the sandboxes: what happens to the next API call.
//!
//! Each sandbox has its own [`SandboxFault`] enum (the errors its real counterpart
//! answers) and keeps one [`FaultControls`] in its state. Every API call (never a token
//! request) goes through [`FaultControls::admit`] under the state lock, then awaits the
//! returned [`Admission`] outside it:
//!
//! ```text
//! let admission = state.lock().faults.admit();   // count, take a due fault
//! match admission.wait().await { None => serve, Some(fault) => answer the fault }
//! ```
//!
//! To add a control, add a field here (armed through a setter on the sandbox) and honour
//! it in `admit`/`Admission::wait`; to add a failure kind, add a variant to the
//! sandbox's enum and map it to its wire error where that enum lives.

use std::time::Duration;

/// A sandbox's injectable failure.
pub trait SandboxFault: Copy + Send + std::fmt::Debug {
    /// `Some(d)`: the call is held for `d` (long enough to trip a client timeout) and
    /// then served normally; `None`: the call fails with this fault.
    fn hold(&self) -> Option<Duration> {
        None
    }
}

/// The fault controls of one sandbox.
#[derive(Debug)]
pub struct FaultControls<F> {
    /// "The next N calls fail this way."
    next: Option<(u32, F)>,
    /// Added to every API call.
    latency: Duration,
    /// API calls admitted so far (faulted ones included).
    calls: u64,
}

impl<F> Default for FaultControls<F> {
    fn default() -> Self {
        FaultControls {
            next: None,
            latency: Duration::ZERO,
            calls: 0,
        }
    }
}

impl<F: SandboxFault> FaultControls<F> {
    /// The next `n` API calls fail with `fault` (`n = 0` clears).
    pub fn fail_next(&mut self, n: u32, fault: F) {
        self.next = (n > 0).then_some((n, fault));
    }

    /// Calls still to fail from the last `fail_next`.
    pub fn pending(&self) -> u32 {
        self.next.as_ref().map_or(0, |(n, _)| *n)
    }

    /// Every API call waits this long before it is served.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// API calls admitted so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn reset_calls(&mut self) {
        self.calls = 0;
    }

    /// Count one API call and take the fault due for it, if any.
    pub fn admit(&mut self) -> Admission<F> {
        self.calls += 1;
        Admission {
            latency: self.latency,
            fault: take_fault(&mut self.next),
        }
    }
}

/// What an admitted call must go through before it is served.
#[must_use]
#[derive(Debug)]
pub struct Admission<F> {
    latency: Duration,
    fault: Option<F>,
}

impl<F: SandboxFault> Admission<F> {
    /// Wait out latency and holds; the fault the call must answer, if any.
    pub async fn wait(self) -> Option<F> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        match self.fault {
            Some(f) => match f.hold() {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    None
                }
                None => Some(f),
            },
            None => None,
        }
    }
}

/// "Fail the next N calls this way": take one due fault, if any, from `slot`.
fn take_fault<F: Copy>(slot: &mut Option<(u32, F)>) -> Option<F> {
    let (n, f) = slot.as_mut()?;
    let fault = *f;
    *n = n.saturating_sub(1);
    if *n == 0 {
        *slot = None;
    }
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum F {
        Boom,
        Slow(Duration),
    }
    impl SandboxFault for F {
        fn hold(&self) -> Option<Duration> {
            match self {
                F::Slow(d) => Some(*d),
                F::Boom => None,
            }
        }
    }

    #[tokio::test]
    async fn faults_are_counted_down_then_cleared() {
        let mut c = FaultControls::default();
        c.fail_next(2, F::Boom);
        assert_eq!(c.admit().wait().await, Some(F::Boom));
        assert_eq!(c.admit().wait().await, Some(F::Boom));
        assert_eq!(c.admit().wait().await, None);
        assert_eq!(c.calls(), 3);
        c.fail_next(5, F::Boom);
        c.fail_next(0, F::Boom);
        assert_eq!(c.admit().wait().await, None, "n = 0 clears");
    }

    #[tokio::test]
    async fn a_hold_delays_then_serves() {
        let mut c = FaultControls::default();
        c.fail_next(1, F::Slow(Duration::from_millis(50)));
        let t = std::time::Instant::now();
        assert_eq!(c.admit().wait().await, None, "served after the hold");
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
