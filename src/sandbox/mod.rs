//! Salesforce and SkillSync emulators speaking the real wire formats (tests, `demo`).

pub mod salesforce;
pub mod skillsync;
