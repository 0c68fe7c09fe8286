//! The sample LMS `syncback sandbox skillsync` starts with (unless `--empty`): a department
//! tree, learners in every department (one inactive, one out of the demo scope), and some
//! enrollments and certifications, so `backfill` and `reconcile` have something to do.

use chrono::{DateTime, TimeZone, Utc};

use super::Lms;
use crate::model::{
    Certification, CertificationStatus, Enrollment, EnrollmentStatus, Learner, LearnerStatus,
};

/// Departments: (id, name, parent).
pub const DEPARTMENTS: &[(&str, &str, Option<&str>)] = &[
    ("42", "Engineering", None),
    ("43", "Sales", Some("42")),
    ("44", "Research", Some("42")),
    ("99", "Outside", None),
];

/// Learners: (id, username, first, last, department id, active, company).
const LEARNERS: &[(&str, &str, &str, &str, &str, bool, &str)] = &[
    (
        "S1",
        "alan@acme.example",
        "Alan",
        "Turing",
        "42",
        true,
        "Acme",
    ),
    (
        "S2",
        "barbara@acme.example",
        "Barbara",
        "Liskov",
        "42",
        true,
        "Acme",
    ),
    (
        "S3",
        "edsger@acme.example",
        "Edsger",
        "Dijkstra",
        "42",
        false,
        "Acme",
    ),
    (
        "S4",
        "margaret@acme.example",
        "Margaret",
        "Hamilton",
        "43",
        true,
        "Globex",
    ),
    (
        "S5",
        "ken@acme.example",
        "Ken",
        "Thompson",
        "43",
        true,
        "Globex",
    ),
    (
        "S6",
        "frances@acme.example",
        "Frances",
        "Allen",
        "44",
        true,
        "Acme",
    ),
    (
        "S7",
        "donald@acme.example",
        "Donald",
        "Knuth",
        "44",
        true,
        "Initech",
    ),
    (
        "S8",
        "radia@partner.example",
        "Radia",
        "Perlman",
        "99",
        true,
        "Partner",
    ),
];

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 9, 0, 0)
        .single()
        .expect("valid date")
}

impl Lms {
    /// Load the sample departments, learners, enrollments and certifications.
    /// Returns a human summary, one line per department.
    pub fn seed_sample(&self) -> Vec<String> {
        for (id, name, parent) in DEPARTMENTS {
            self.add_department(id, name, *parent);
        }
        for (id, user, first, last, dept, active, company) in LEARNERS {
            let name = DEPARTMENTS
                .iter()
                .find(|d| d.0 == *dept)
                .map(|d| d.1.to_string());
            self.upsert_learner(Learner {
                id: id.to_string(),
                username: user.to_string(),
                email: Some(user.to_string()),
                first_name: Some(first.to_string()),
                last_name: Some(last.to_string()),
                department_id: Some(dept.to_string()),
                department_name: name,
                status: if *active {
                    LearnerStatus::Active
                } else {
                    LearnerStatus::Inactive
                },
                fields: [("company".to_string(), Some(company.to_string()))].into(),
                updated_at: at(2),
            });
        }
        for (i, (learner, course, name, status)) in [
            (
                "S1",
                "C-101",
                "Salesforce Basics",
                EnrollmentStatus::Completed,
            ),
            (
                "S1",
                "C-202",
                "Advanced Flows",
                EnrollmentStatus::InProgress,
            ),
            (
                "S4",
                "C-101",
                "Salesforce Basics",
                EnrollmentStatus::Enrolled,
            ),
            ("S6", "C-303", "Data Modelling", EnrollmentStatus::Completed),
        ]
        .into_iter()
        .enumerate()
        {
            let done = status == EnrollmentStatus::Completed;
            self.add_enrollment(Enrollment {
                id: format!("SE{}", i + 1),
                learner_id: learner.into(),
                course_id: course.into(),
                course_name: name.into(),
                status,
                enrolled_at: at(3),
                completed_at: done.then(|| at(20)),
                score: done.then_some(88.0),
                updated_at: at(20),
            });
        }
        for (i, (learner, name)) in [("S1", "Admin Certified"), ("S6", "Data Architect")]
            .into_iter()
            .enumerate()
        {
            self.add_certification(Certification {
                id: format!("SC{}", i + 1),
                learner_id: learner.into(),
                name: name.into(),
                issued_at: at(21),
                expires_at: Some(at(21) + chrono::Duration::days(730)),
                status: CertificationStatus::Active,
                updated_at: at(21),
            });
        }
        DEPARTMENTS
            .iter()
            .map(|(id, name, parent)| {
                let learners: Vec<&str> = LEARNERS
                    .iter()
                    .filter(|l| l.4 == *id)
                    .map(|l| l.0)
                    .collect();
                format!(
                    "department {id} {name}{}: learners {}",
                    parent.map(|p| format!(" (in {p})")).unwrap_or_default(),
                    learners.join(", ")
                )
            })
            .collect()
    }
}
