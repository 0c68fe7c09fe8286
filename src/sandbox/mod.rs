//! Salesforce and SkillSync emulators speaking the real wire formats (tests, `demo`).

pub mod salesforce;
pub mod skillsync;

/// "Fail the next N calls this way": take one due fault, if any, from `slot`.
pub(crate) fn take_fault<F: Copy>(slot: &mut Option<(u32, F)>) -> Option<F> {
    let (n, f) = slot.as_mut()?;
    let fault = *f;
    *n = n.saturating_sub(1);
    if *n == 0 {
        *slot = None;
    }
    Some(fault)
}
