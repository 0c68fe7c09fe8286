//! Domain types shared by every module: the webhook envelope and the SkillSync
//! snapshots it carries (docs/rules.md "Webhook contract"). The JSON Schemas in `schemas/` are the wire
//! contract; these types are what the rest of the code works with once a body
//! has passed them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// SkillSync ids are strings on the wire; integers are accepted and normalised.
pub fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        I(i64),
        U(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::I(i) => i.to_string(),
        Id::U(u) => u.to_string(),
    })
}

/// Like [`id_string`] for nullable ids.
pub fn opt_id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        I(i64),
        U(u64),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::I(i) => i.to_string(),
        Id::U(u) => u.to_string(),
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "learner.created")]
    LearnerCreated,
    #[serde(rename = "learner.updated")]
    LearnerUpdated,
    #[serde(rename = "learner.deactivated")]
    LearnerDeactivated,
    #[serde(rename = "learner.reactivated")]
    LearnerReactivated,
    #[serde(rename = "enrollment.created")]
    EnrollmentCreated,
    #[serde(rename = "enrollment.updated")]
    EnrollmentUpdated,
    #[serde(rename = "enrollment.completed")]
    EnrollmentCompleted,
    #[serde(rename = "enrollment.deleted")]
    EnrollmentDeleted,
    #[serde(rename = "certification.issued")]
    CertificationIssued,
    #[serde(rename = "certification.revoked")]
    CertificationRevoked,
    #[serde(rename = "certification.expired")]
    CertificationExpired,
}

/// The kind of entity an event is about (R12 orders events per entity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Learner,
    Enrollment,
    Certification,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Learner => "learner",
            EntityKind::Enrollment => "enrollment",
            EntityKind::Certification => "certification",
        }
    }
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::LearnerCreated,
        EventType::LearnerUpdated,
        EventType::LearnerDeactivated,
        EventType::LearnerReactivated,
        EventType::EnrollmentCreated,
        EventType::EnrollmentUpdated,
        EventType::EnrollmentCompleted,
        EventType::EnrollmentDeleted,
        EventType::CertificationIssued,
        EventType::CertificationRevoked,
        EventType::CertificationExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LearnerCreated => "learner.created",
            EventType::LearnerUpdated => "learner.updated",
            EventType::LearnerDeactivated => "learner.deactivated",
            EventType::LearnerReactivated => "learner.reactivated",
            EventType::EnrollmentCreated => "enrollment.created",
            EventType::EnrollmentUpdated => "enrollment.updated",
            EventType::EnrollmentCompleted => "enrollment.completed",
            EventType::EnrollmentDeleted => "enrollment.deleted",
            EventType::CertificationIssued => "certification.issued",
            EventType::CertificationRevoked => "certification.revoked",
            EventType::CertificationExpired => "certification.expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn entity(self) -> EntityKind {
        match self {
            EventType::LearnerCreated
            | EventType::LearnerUpdated
            | EventType::LearnerDeactivated
            | EventType::LearnerReactivated => EntityKind::Learner,
            EventType::EnrollmentCreated
            | EventType::EnrollmentUpdated
            | EventType::EnrollmentCompleted
            | EventType::EnrollmentDeleted => EntityKind::Enrollment,
            EventType::CertificationIssued
            | EventType::CertificationRevoked
            | EventType::CertificationExpired => EntityKind::Certification,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnerStatus {
    Active,
    Inactive,
}

/// `data.learner` (docs/rules.md "Webhook contract") and `GET /api/v1/learners/{id}` (docs/rules.md "SkillSync").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Learner {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "opt_id_string")]
    pub department_id: Option<String>,
    #[serde(default)]
    pub department_name: Option<String>,
    pub status: LearnerStatus,
    #[serde(default)]
    pub fields: BTreeMap<String, Option<String>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentStatus {
    Enrolled,
    InProgress,
    Completed,
    Cancelled,
}

impl EnrollmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentStatus::Enrolled => "enrolled",
            EnrollmentStatus::InProgress => "in_progress",
            EnrollmentStatus::Completed => "completed",
            EnrollmentStatus::Cancelled => "cancelled",
        }
    }
}

/// `data.enrollment` (docs/rules.md "Webhook contract").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(deserialize_with = "id_string")]
    pub learner_id: String,
    #[serde(deserialize_with = "id_string")]
    pub course_id: String,
    pub course_name: String,
    pub status: EnrollmentStatus,
    pub enrolled_at: DateTime<Utc>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub score: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificationStatus {
    Active,
    Revoked,
    Expired,
}

impl CertificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificationStatus::Active => "active",
            CertificationStatus::Revoked => "revoked",
            CertificationStatus::Expired => "expired",
        }
    }
}

/// `data.certification` (docs/rules.md "Webhook contract").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certification {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(deserialize_with = "id_string")]
    pub learner_id: String,
    pub name: String,
    pub issued_at: DateTime<Utc>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub status: CertificationStatus,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner: Option<Learner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certification: Option<Certification>,
}

/// The webhook body (docs/rules.md "Webhook contract").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub data: EventData,
}

impl Envelope {
    /// The learner this event belongs to (every event has one).
    pub fn learner_id(&self) -> Option<&str> {
        match self.event_type.entity() {
            EntityKind::Learner => self.data.learner.as_ref().map(|l| l.id.as_str()),
            EntityKind::Enrollment => self.data.enrollment.as_ref().map(|e| e.learner_id.as_str()),
            EntityKind::Certification => self
                .data
                .certification
                .as_ref()
                .map(|c| c.learner_id.as_str()),
        }
    }

    /// (kind, id) of the entity the event is about, for R12 ordering.
    pub fn entity(&self) -> Option<(EntityKind, &str)> {
        let kind = self.event_type.entity();
        let id = match kind {
            EntityKind::Learner => self.data.learner.as_ref().map(|l| l.id.as_str()),
            EntityKind::Enrollment => self.data.enrollment.as_ref().map(|e| e.id.as_str()),
            EntityKind::Certification => self.data.certification.as_ref().map(|c| c.id.as_str()),
        }?;
        Some((kind, id))
    }
}

/// A SkillSync department (docs/rules.md "SkillSync").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub name: String,
    #[serde(default, deserialize_with = "opt_id_string")]
    pub parent_id: Option<String>,
}

/// One page of a cursor-paginated SkillSync listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}
