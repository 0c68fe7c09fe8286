//! Batched reads for reconcile: every Salesforce read is a SOQL query with an `IN` list
//! (chunked to stay well inside the URL length Salesforce accepts) or a relationship-free
//! query on the link field; SkillSync snapshots, enrollments and certifications are read
//! concurrently. A batch of learners costs a handful of Salesforce calls, not one per learner.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::config::SyncSettings;
use crate::model::{Learner, LearnerStatus};
use crate::salesforce::{soql, Record, SalesforceApi, SfError};
use crate::skillsync::scope::ScopeResolver;
use crate::skillsync::{SkillSyncApi, SsError};
use crate::store::{LearnerState, Store, StoreError};
use crate::sync::rules::{self, AccountTarget};

use super::diff::{
    unlink_reason, ChildView, ContactView, ExpectedChildren, LearnerView, Remembered,
};

/// Characters of `IN (…)` values per query: with URL encoding this keeps a query GET well
/// under Salesforce's 16,384-character URI limit.
pub const MAX_IN_CHARS: usize = 8_000;
/// Concurrent SkillSync reads.
const SS_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Salesforce: {0}")]
    Salesforce(#[from] SfError),
    #[error("SkillSync: {0}")]
    SkillSync(#[from] SsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub use crate::salesforce::soql::chunks_by_len;

pub struct Loader<'a> {
    pub settings: &'a SyncSettings,
    pub sf: &'a dyn SalesforceApi,
    pub ss: &'a dyn SkillSyncApi,
    pub scope: &'a ScopeResolver,
    pub store: &'a dyn Store,
    /// Account Name (lowercase) → ids, for the whole pass (R4).
    accounts: Mutex<HashMap<String, Vec<String>>>,
}

/// The Contact fields reconcile reads: Id, AccountId, the link, the match field and the mapping.
pub fn contact_fields(s: &SyncSettings) -> Vec<String> {
    let mut out: Vec<String> = vec!["Id".into(), "AccountId".into(), s.link_field.clone()];
    let mut push = |f: &str| {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(f)) {
            out.push(f.to_string());
        }
    };
    push(&s.match_field);
    push("LastName");
    for f in s.field_map.keys() {
        push(f);
    }
    out
}

fn child_fields(object: &str) -> Vec<&'static str> {
    let mut out = vec!["Id", "Contact__c"];
    if object == rules::ENROLLMENT_OBJECT {
        out.extend([
            rules::ENROLLMENT_EXT_ID,
            "Course_Id__c",
            "Course_Name__c",
            "Status__c",
            "Enrolled_At__c",
            "Completed_At__c",
            "Score__c",
        ]);
    } else {
        out.extend([
            rules::CERTIFICATION_EXT_ID,
            "Name__c",
            "Issued_At__c",
            "Expires_At__c",
            "Status__c",
        ]);
    }
    out
}

fn contact_view(r: Record) -> Option<ContactView> {
    let id = r.get("Id")?.as_str()?.to_string();
    Some(ContactView { id, record: r })
}

impl<'a> Loader<'a> {
    pub fn new(
        settings: &'a SyncSettings,
        sf: &'a dyn SalesforceApi,
        ss: &'a dyn SkillSyncApi,
        scope: &'a ScopeResolver,
        store: &'a dyn Store,
    ) -> Self {
        Loader {
            settings,
            sf,
            ss,
            scope,
            store,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn select(&self) -> String {
        contact_fields(self.settings).join(", ")
    }

    /// Every Contact carrying a learner link, by learner id: one relationship-free query on
    /// the link field, paginated (how learners that left the scope without an event are found).
    pub async fn linked_contacts(&self) -> Result<HashMap<String, Vec<ContactView>>, LoadError> {
        let q = format!(
            "SELECT {} FROM Contact WHERE {} != null",
            self.select(),
            soql::name(&self.settings.link_field)
        );
        let mut out: HashMap<String, Vec<ContactView>> = HashMap::new();
        for r in self.sf.query(&q).await? {
            if let Some(c) = contact_view(r) {
                if let Some(l) = c.link(&self.settings.link_field) {
                    out.entry(l.to_string()).or_default().push(c);
                }
            }
        }
        Ok(out)
    }

    /// Contacts where `field IN values`, chunked.
    async fn contacts_where(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<Vec<ContactView>, LoadError> {
        let mut out = Vec::new();
        for chunk in chunks_by_len(values, MAX_IN_CHARS) {
            let q = format!(
                "SELECT {} FROM Contact WHERE {}",
                self.select(),
                soql::in_list(field, chunk)
            );
            out.extend(
                self.sf
                    .query(&q)
                    .await?
                    .into_iter()
                    .filter_map(contact_view),
            );
        }
        Ok(out)
    }

    /// SkillSync snapshots of these learners (`None`: SkillSync no longer has it).
    pub async fn snapshots(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Option<Learner>>, LoadError> {
        let ss = self.ss;
        stream::iter(ids.iter().cloned())
            .map(|id| async move {
                let l = ss.learner(&id).await?;
                Ok::<_, LoadError>((id, l))
            })
            .buffer_unordered(SS_CONCURRENCY)
            .try_collect()
            .await
    }

    /// R4 for a batch: Account names resolved with one `IN` query for the names not seen yet.
    async fn accounts(
        &self,
        learners: &[&Learner],
    ) -> Result<HashMap<String, Result<String, rules::Permanent>>, LoadError> {
        let targets: Vec<(&Learner, Result<AccountTarget, rules::Permanent>)> = learners
            .iter()
            .map(|l| (*l, rules::account_target(self.settings, l)))
            .collect();
        let wanted: Vec<String> = {
            let known = self.accounts.lock().unwrap();
            let mut w: BTreeSet<String> = BTreeSet::new();
            for (_, t) in &targets {
                if let Ok(AccountTarget::Name(n)) = t {
                    if !known.contains_key(&n.to_lowercase()) {
                        w.insert(n.clone());
                    }
                }
            }
            w.into_iter().collect()
        };
        for chunk in chunks_by_len(&wanted, MAX_IN_CHARS) {
            let q = format!(
                "SELECT Id, Name FROM Account WHERE {}",
                soql::in_list("Name", chunk)
            );
            let rows = self.sf.query(&q).await?;
            let mut known = self.accounts.lock().unwrap();
            for n in chunk {
                known.entry(n.to_lowercase()).or_default();
            }
            for r in rows {
                if let (Some(id), Some(name)) = (
                    r.get("Id").and_then(Value::as_str),
                    r.get("Name").and_then(Value::as_str),
                ) {
                    known
                        .entry(name.to_lowercase())
                        .or_default()
                        .push(id.to_string());
                }
            }
        }
        let known = self.accounts.lock().unwrap();
        Ok(targets
            .into_iter()
            .map(|(l, t)| {
                let r = t.and_then(|t| match t {
                    AccountTarget::Id(id) => Ok(id),
                    AccountTarget::Name(n) => rules::pick_account(
                        &n,
                        known
                            .get(&n.to_lowercase())
                            .map(Vec::as_slice)
                            .unwrap_or(&[]),
                    ),
                });
                (l.id.clone(), r)
            })
            .collect())
    }

    /// Child records of these Contacts, by Contact.
    async fn children_of(
        &self,
        contacts: &[String],
    ) -> Result<HashMap<String, Vec<ChildView>>, LoadError> {
        let mut out: HashMap<String, Vec<ChildView>> = HashMap::new();
        for (object, ext) in [
            (rules::ENROLLMENT_OBJECT, rules::ENROLLMENT_EXT_ID),
            (rules::CERTIFICATION_OBJECT, rules::CERTIFICATION_EXT_ID),
        ] {
            for chunk in chunks_by_len(contacts, MAX_IN_CHARS) {
                let q = format!(
                    "SELECT {} FROM {object} WHERE {}",
                    child_fields(object).join(", "),
                    soql::in_list("Contact__c", chunk)
                );
                for r in self.sf.query(&q).await? {
                    let (Some(id), Some(contact), Some(ext_id)) = (
                        r.get("Id").and_then(Value::as_str).map(String::from),
                        r.get("Contact__c")
                            .and_then(Value::as_str)
                            .map(String::from),
                        r.get(ext)
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(String::from),
                    ) else {
                        continue; // not a record syncback wrote
                    };
                    out.entry(contact).or_default().push(ChildView {
                        object,
                        id,
                        ext_id,
                        record: r,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Build the views of a batch. `snapshots` has an entry per learner (read beforehand);
    /// `carriers`: the Contacts carrying each learner's link when already read (full pass),
    /// else they are read here with one `IN` query on the link field.
    pub async fn views(
        &self,
        snapshots: Vec<(String, Option<Learner>)>,
        carriers: Option<&HashMap<String, Vec<ContactView>>>,
    ) -> Result<Vec<LearnerView>, LoadError> {
        let ids: Vec<String> = snapshots.iter().map(|(id, _)| id.clone()).collect();
        let link = &self.settings.link_field;
        let states: HashMap<String, LearnerState> = self
            .store
            .learners(&ids)
            .await?
            .into_iter()
            .map(|s| (s.learner_id.clone(), s))
            .collect();
        let read;
        let carriers = match carriers {
            Some(c) => c,
            None => {
                let mut m: HashMap<String, Vec<ContactView>> = HashMap::new();
                for c in self.contacts_where(link, &ids).await? {
                    if let Some(l) = c.link(link) {
                        m.entry(l.to_string()).or_default().push(c);
                    }
                }
                read = m;
                &read
            }
        };
        let mut views = Vec::with_capacity(snapshots.len());
        for (id, snapshot) in snapshots {
            let in_scope = match &snapshot {
                Some(l) if l.status == LearnerStatus::Active => {
                    self.scope.in_scope(l.department_id.as_deref()).await?
                }
                _ => false,
            };
            let state = states.get(&id).cloned();
            let mine = carriers.get(&id).cloned().unwrap_or_default();
            let remembered = match state.as_ref().and_then(|s| s.contact_id.as_deref()) {
                None => Remembered::None,
                Some(c) => match mine.iter().find(|x| x.id == c) {
                    Some(x) => Remembered::Alive(x.clone()),
                    None => Remembered::Deleted(c.to_string()), // checked below
                },
            };
            views.push(LearnerView {
                learner_id: id,
                snapshot,
                in_scope,
                state,
                carriers: mine,
                remembered,
                matches: Vec::new(),
                account: None,
                children: None,
                sf_children: Vec::new(),
            });
        }
        // Remembered Contacts that carry no link: do they still exist?
        let unknown: Vec<String> = views
            .iter()
            .filter_map(|v| match &v.remembered {
                Remembered::Deleted(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        if !unknown.is_empty() {
            let found: HashMap<String, ContactView> = self
                .contacts_where("Id", &unknown)
                .await?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
            for v in &mut views {
                if let Remembered::Deleted(c) = &v.remembered {
                    if let Some(x) = found.get(c) {
                        v.remembered = Remembered::Alive(x.clone());
                    }
                }
            }
        }
        // Learners that should be linked: R4 Account, R5 candidates, children.
        let linkable: Vec<usize> = (0..views.len())
            .filter(|&i| unlink_reason(views[i].snapshot.as_ref(), views[i].in_scope).is_none())
            .collect();
        let learners: Vec<&Learner> = linkable
            .iter()
            .filter_map(|&i| views[i].snapshot.as_ref())
            .collect();
        let mut accounts = self.accounts(&learners).await?;
        let unmatched: Vec<String> = linkable
            .iter()
            .filter(|&&i| {
                views[i].carriers.is_empty() && !matches!(views[i].remembered, Remembered::Alive(_))
            })
            .filter_map(|&i| views[i].snapshot.as_ref().map(|l| l.username.clone()))
            .collect();
        let mut by_match: HashMap<String, Vec<ContactView>> = HashMap::new();
        if !unmatched.is_empty() {
            let mf = &self.settings.match_field;
            for c in self.contacts_where(mf, &unmatched).await? {
                if let Some(v) = c.field(mf).as_str() {
                    by_match
                        .entry(v.to_lowercase())
                        .or_default()
                        .push(c.clone());
                }
            }
        }
        let targets: Vec<String> = linkable
            .iter()
            .filter_map(
                |&i| match (&views[i].remembered, views[i].carriers.as_slice()) {
                    (Remembered::Alive(c), _) => Some(c.id.clone()),
                    (_, [one]) => Some(one.id.clone()),
                    _ => None,
                },
            )
            .collect();
        let mut sf_children = if targets.is_empty() {
            HashMap::new()
        } else {
            self.children_of(&targets).await?
        };
        let ss = self.ss;
        let linkable_ids: Vec<String> = linkable
            .iter()
            .map(|&i| views[i].learner_id.clone())
            .collect();
        let mut children: HashMap<String, ExpectedChildren> = stream::iter(linkable_ids)
            .map(|id| async move {
                let (enrollments, certifications) =
                    futures::try_join!(ss.enrollments(&id), ss.certifications(&id))?;
                Ok::<_, LoadError>((
                    id,
                    ExpectedChildren {
                        enrollments,
                        certifications,
                    },
                ))
            })
            .buffer_unordered(SS_CONCURRENCY)
            .try_collect()
            .await?;
        for &i in &linkable {
            let v = &mut views[i];
            v.account = accounts.remove(&v.learner_id);
            if let Some(l) = &v.snapshot {
                v.matches = by_match
                    .get(&l.username.to_lowercase())
                    .cloned()
                    .unwrap_or_default();
            }
            v.children = children.remove(&v.learner_id);
            let target = match (&v.remembered, v.carriers.as_slice()) {
                (Remembered::Alive(c), _) => Some(c.id.clone()),
                (_, [one]) => Some(one.id.clone()),
                _ => None,
            };
            if let Some(t) = target {
                v.sf_children = sf_children.remove(&t).unwrap_or_default();
            }
        }
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_are_chunked_by_length() {
        let ids: Vec<String> = (0..1000).map(|i| format!("003{i:015}")).collect();
        let chunks = chunks_by_len(&ids, MAX_IN_CHARS);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 1000);
        for c in &chunks {
            assert!(soql::in_list("Id", c).len() <= MAX_IN_CHARS + 20);
        }
        assert!(chunks_by_len::<String>(&[], 10).is_empty());
        // One value longer than the budget still gets its own chunk.
        assert_eq!(chunks_by_len(&["x".repeat(50)], 10).len(), 1);
    }

    #[test]
    fn contact_fields_are_deduplicated() {
        let s = SyncSettings::default();
        let f = contact_fields(&s);
        assert_eq!(
            f,
            vec![
                "Id",
                "AccountId",
                "SkillSync_User_Id__c",
                "Email",
                "LastName",
                "FirstName"
            ]
        );
    }
}
