//! SkillSync REST (docs/rules.md "SkillSync"): departments, learner snapshots, enrollments, certifications.
//!
//! [`SkillSyncApi`] is the port; [`client::Client`] implements it over HTTP and the
//! in-memory LMS of [`crate::sandbox::skillsync`] implements it directly.
//! [`scope::ScopeResolver`] answers R3 on top of it.

use async_trait::async_trait;

use crate::model::{Certification, Department, Enrollment, Learner, Page};

pub mod client;
pub mod scope;

pub use client::Client;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SsError {
    /// Network, timeout, 5xx, 429: retry later.
    #[error("skillsync transient error: {0}")]
    Transient(String),
    /// Credentials refused (401/403 after a fresh token).
    #[error("skillsync refused the credentials: {0}")]
    Unauthorized(String),
    /// Anything else that retrying will not fix (4xx, unreadable body).
    #[error("skillsync error: {0}")]
    Permanent(String),
}

impl SsError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SsError::Transient(_))
    }
}

#[async_trait]
pub trait SkillSyncApi: Send + Sync {
    /// `GET /api/v1/departments/{id}`; `Ok(None)` on 404.
    async fn department(&self, id: &str) -> Result<Option<Department>, SsError>;
    /// `GET /api/v1/departments/{id}/children` (direct children).
    async fn department_children(&self, id: &str) -> Result<Vec<Department>, SsError>;
    /// `GET /api/v1/learners/{id}`; `Ok(None)` on 404.
    async fn learner(&self, id: &str) -> Result<Option<Learner>, SsError>;
    /// `GET /api/v1/learners?department_id=…&cursor=…` (learners directly in the department).
    async fn learners_page(
        &self,
        department_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Learner>, SsError>;
    /// `GET /api/v1/learners/{id}/enrollments` (all pages).
    async fn enrollments(&self, learner_id: &str) -> Result<Vec<Enrollment>, SsError>;
    /// `GET /api/v1/learners/{id}/certifications` (all pages).
    async fn certifications(&self, learner_id: &str) -> Result<Vec<Certification>, SsError>;
}
