//! Schema and ids of the sandbox org: its sObjects and fields, 18-character ids, describe.

use crate::salesforce::{ApiError, Describe, FieldDescribe, SfError};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Id,
    String,
    Email,
    DateTime,
    Double,
    Reference(&'static str),
}

pub(super) struct FieldDef {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) required: bool,
    pub(super) external_id: bool,
}

pub(super) const fn f(name: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        kind,
        required: false,
        external_id: false,
    }
}
pub(super) const fn req(name: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        kind,
        required: true,
        external_id: false,
    }
}
pub(super) const fn ext(name: &'static str) -> FieldDef {
    FieldDef {
        name,
        kind: Kind::String,
        required: false,
        external_id: true,
    }
}

pub(super) struct ObjectDef {
    pub(super) name: &'static str,
    pub(super) prefix: &'static str,
    pub(super) fields: &'static [FieldDef],
}

pub(super) static SYSTEM: [FieldDef; 4] = [
    f("Id", Kind::Id),
    f("CreatedDate", Kind::DateTime),
    f("LastModifiedDate", Kind::DateTime),
    f("SystemModstamp", Kind::DateTime),
];

pub(super) static OBJECTS: &[ObjectDef] = &[
    ObjectDef {
        name: "Account",
        prefix: "001",
        fields: &[
            req("Name", Kind::String),
            f("Type", Kind::String),
            f("Industry", Kind::String),
            f("Description", Kind::String),
        ],
    },
    ObjectDef {
        name: "Contact",
        prefix: "003",
        fields: &[
            f("FirstName", Kind::String),
            req("LastName", Kind::String),
            f("Email", Kind::Email),
            f("Title", Kind::String),
            f("Phone", Kind::String),
            f("Department", Kind::String),
            f("AccountId", Kind::Reference("Account")),
            ext("SkillSync_User_Id__c"),
        ],
    },
    ObjectDef {
        name: "SkillSync_Enrollment__c",
        prefix: "a01",
        fields: &[
            ext("SkillSync_Enrollment_Id__c"),
            req("Contact__c", Kind::Reference("Contact")),
            f("Course_Id__c", Kind::String),
            f("Course_Name__c", Kind::String),
            f("Status__c", Kind::String),
            f("Enrolled_At__c", Kind::DateTime),
            f("Completed_At__c", Kind::DateTime),
            f("Score__c", Kind::Double),
        ],
    },
    ObjectDef {
        name: "SkillSync_Certification__c",
        prefix: "a02",
        fields: &[
            ext("SkillSync_Certification_Id__c"),
            req("Contact__c", Kind::Reference("Contact")),
            f("Name__c", Kind::String),
            f("Issued_At__c", Kind::DateTime),
            f("Expires_At__c", Kind::DateTime),
            f("Status__c", Kind::String),
        ],
    },
];

pub(super) fn object(name: &str) -> Result<&'static ObjectDef, SfError> {
    OBJECTS
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| err(404, "NOT_FOUND", &format!("The requested resource does not exist: sObject type '{name}' is not supported."), &[]))
}

impl ObjectDef {
    /// A field by name, case-insensitively (as Salesforce resolves names).
    pub(super) fn field(&self, name: &str) -> Option<&'static FieldDef> {
        SYSTEM
            .iter()
            .chain(self.fields.iter())
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

pub(super) fn err(status: u16, code: &str, message: &str, fields: &[&str]) -> SfError {
    SfError::from_errors(
        status,
        vec![ApiError {
            message: message.to_string(),
            error_code: code.to_string(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
        }],
    )
}

/// Salesforce's 3-character case-safe suffix of a 15-character id.
pub(super) fn id_suffix(id15: &str) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk.iter().enumerate().fold(0usize, |acc, (i, c)| {
                if c.is_ascii_uppercase() {
                    acc | (1 << i)
                } else {
                    acc
                }
            });
            ALPHA[bits] as char
        })
        .collect()
}

/// 15- or 18-character id → the canonical 18-character one.
pub(super) fn canonical_id(id: &str) -> Option<String> {
    match id.len() {
        18 if id.is_ascii() && id_suffix(&id[..15]).eq_ignore_ascii_case(&id[15..]) => {
            Some(format!("{}{}", &id[..15], id_suffix(&id[..15])))
        }
        15 if id.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(format!("{id}{}", id_suffix(id)))
        }
        _ => None,
    }
}

pub(super) fn describe(sobject: &str) -> Result<Describe, SfError> {
    let o = object(sobject)?;
    Ok(Describe {
        name: o.name.to_string(),
        fields: SYSTEM
            .iter()
            .chain(o.fields.iter())
            .map(|d| FieldDescribe {
                name: d.name.to_string(),
                field_type: match d.kind {
                    Kind::Id => "id",
                    Kind::String => "string",
                    Kind::Email => "email",
                    Kind::DateTime => "datetime",
                    Kind::Double => "double",
                    Kind::Reference(_) => "reference",
                }
                .to_string(),
                external_id: d.external_id,
                unique: d.external_id,
                nillable: !d.required && d.kind != Kind::Id,
            })
            .collect(),
    })
}
