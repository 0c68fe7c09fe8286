//! `syncback` keeps Salesforce Contacts in step with SkillSync LMS Learners.
//!
//! Flow (docs/rules.md "Flow"): SkillSync posts signed webhooks to [`http`], which verifies them
//! ([`webhook`]) and publishes them durably to a [`queue`]. Workers ([`worker`]) consume
//! them and apply the per-learner rules of [`sync`] (R1–R13) against Salesforce
//! ([`salesforce`]), SkillSync ([`skillsync`]) and the state [`store`].
//! [`sandbox`] holds faithful Salesforce and SkillSync emulators for tests and `demo`.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod model;
pub mod queue;
pub mod salesforce;
pub mod sandbox;
pub mod skillsync;
pub mod store;
pub mod sync;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod webhook;
pub mod worker;
