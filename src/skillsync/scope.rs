//! R2 (the source department must exist) and R3 (which learners are in scope).
//!
//! `with_subdepartments` walks the department tree breadth-first from the source
//! department through `GET /api/v1/departments/{id}/children`, iteratively (very deep
//! trees are fine) with a visited set (cycles are fine). The resulting set is cached
//! for a TTL; one caller refreshes it while the others wait (single flight).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{SkillSyncApi, SsError};
use crate::config::Scope;
use crate::model::Department;

/// Why the source department could not be validated (R2).
#[derive(Debug, thiserror::Error)]
pub enum SourceCheckError {
    #[error("source department {0} does not exist in SkillSync (GET /api/v1/departments/{0} answered 404)")]
    Unknown(String),
    #[error("SkillSync refused the credentials (skillsync.client_id / client_secret): {0}")]
    Unauthorized(String),
    #[error("SkillSync is unreachable (skillsync.base_url): {0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

struct Cached {
    /// The source department the tree was walked from.
    source: String,
    /// In-scope departments, source first, breadth-first order.
    departments: Vec<Department>,
    ids: HashSet<String>,
    at: Instant,
}

pub struct ScopeResolver {
    api: Arc<dyn SkillSyncApi>,
    /// (source department, scope) in force; the mapping may change at run time
    /// (docs/rules.md R2/R3, console-managed mapping), see [`ScopeResolver::retarget`].
    target: Mutex<(String, Scope)>,
    ttl: Duration,
    cache: Mutex<Option<Arc<Cached>>>,
    refresh: tokio::sync::Mutex<()>,
}

impl ScopeResolver {
    pub fn new(
        api: Arc<dyn SkillSyncApi>,
        source_department_id: &str,
        scope: Scope,
        ttl: Duration,
    ) -> Self {
        ScopeResolver {
            api,
            target: Mutex::new((source_department_id.to_string(), scope)),
            ttl,
            cache: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn source(&self) -> String {
        self.target.lock().unwrap().0.clone()
    }

    fn scope(&self) -> Scope {
        self.target.lock().unwrap().1
    }

    /// Point the resolver at another source department / scope (a new mapping was put in
    /// force); the cached tree is dropped when the source changes.
    pub fn retarget(&self, source_department_id: &str, scope: Scope) {
        let mut t = self.target.lock().unwrap();
        if t.0 != source_department_id || t.1 != scope {
            *t = (source_department_id.to_string(), scope);
            drop(t);
            self.invalidate();
        }
    }

    /// R3 for the mapping `settings` (retargets first when it changed).
    pub async fn in_scope_for(
        &self,
        source_department_id: &str,
        scope: Scope,
        department_id: Option<&str>,
    ) -> Result<bool, SsError> {
        self.retarget(source_department_id, scope);
        self.in_scope(department_id).await
    }

    /// R2: `GET /api/v1/departments/{id}` must answer 200.
    pub async fn validate_source(&self) -> Result<Department, SourceCheckError> {
        let source = self.source();
        if source.trim().is_empty() {
            return Err(SourceCheckError::Other(
                "sync.source_department_id is empty".into(),
            ));
        }
        match self.api.department(&source).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(SourceCheckError::Unknown(source)),
            Err(SsError::Unauthorized(m)) => Err(SourceCheckError::Unauthorized(m)),
            Err(SsError::Transient(m)) => Err(SourceCheckError::Unreachable(m)),
            Err(SsError::Permanent(m)) => Err(SourceCheckError::Other(m)),
        }
    }

    /// R3: is a learner of `department_id` in scope?
    pub async fn in_scope(&self, department_id: Option<&str>) -> Result<bool, SsError> {
        let Some(d) = department_id else {
            return Ok(false);
        };
        let source = self.source();
        match self.scope() {
            Scope::DepartmentOnly => Ok(d == source),
            Scope::WithSubdepartments => {
                if d == source {
                    return Ok(true);
                }
                Ok(self.tree().await?.ids.contains(d))
            }
        }
    }

    /// The in-scope departments (source first, breadth-first).
    pub async fn departments(&self) -> Result<Vec<Department>, SsError> {
        match self.scope() {
            Scope::DepartmentOnly => Ok(self
                .api
                .department(&self.source())
                .await?
                .into_iter()
                .collect()),
            Scope::WithSubdepartments => Ok(self.tree().await?.departments.clone()),
        }
    }

    /// Forget the cached tree (the next question reads it again).
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap() = None;
    }

    fn fresh(&self) -> Option<Arc<Cached>> {
        self.cache
            .lock()
            .unwrap()
            .as_ref()
            .filter(|c| c.at.elapsed() < self.ttl && c.source == self.source())
            .cloned()
    }

    async fn tree(&self) -> Result<Arc<Cached>, SsError> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one = self.refresh.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c); // another caller refreshed it while we waited
        }
        let c = Arc::new(self.walk().await?);
        *self.cache.lock().unwrap() = Some(c.clone());
        Ok(c)
    }

    async fn walk(&self) -> Result<Cached, SsError> {
        let source = self.source();
        let root = self.api.department(&source).await?.unwrap_or(Department {
            id: source.clone(),
            name: String::new(),
            parent_id: None,
        });
        let mut ids = HashSet::from([root.id.clone()]);
        let mut departments = vec![root.clone()];
        let mut todo = VecDeque::from([root.id]);
        while let Some(id) = todo.pop_front() {
            for child in self.api.department_children(&id).await? {
                if ids.insert(child.id.clone()) {
                    todo.push_back(child.id.clone());
                    departments.push(child);
                }
            }
        }
        tracing::debug!(source = %source, departments = departments.len(), "department tree loaded");
        Ok(Cached {
            source,
            departments,
            ids,
            at: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::skillsync::Lms;

    fn resolver(lms: &Lms, scope: Scope, ttl: Duration) -> ScopeResolver {
        ScopeResolver::new(Arc::new(lms.clone()), "42", scope, ttl)
    }

    fn tree() -> Lms {
        let lms = Lms::new();
        lms.add_department("42", "Engineering", None);
        lms.add_department("43", "Sales", Some("42"));
        lms.add_department("44", "Research", Some("43"));
        lms.add_department("99", "Outside", None);
        lms
    }

    #[tokio::test]
    async fn department_only_is_the_source_alone() {
        let r = resolver(&tree(), Scope::DepartmentOnly, Duration::from_secs(60));
        assert!(r.in_scope(Some("42")).await.unwrap());
        assert!(!r.in_scope(Some("43")).await.unwrap());
        assert!(!r.in_scope(None).await.unwrap());
        assert_eq!(r.departments().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn with_subdepartments_covers_descendants_only() {
        let r = resolver(&tree(), Scope::WithSubdepartments, Duration::from_secs(60));
        for (d, want) in [("42", true), ("43", true), ("44", true), ("99", false)] {
            assert_eq!(r.in_scope(Some(d)).await.unwrap(), want, "{d}");
        }
        let ids: Vec<_> = r
            .departments()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["42", "43", "44"], "source first, breadth-first");
    }

    #[tokio::test]
    async fn cycles_and_very_deep_trees_terminate() {
        let lms = Lms::new();
        lms.add_department("42", "Root", Some("45"));
        lms.add_department("43", "A", Some("42"));
        lms.add_department("45", "B", Some("43")); // 42 → 43 → 45 → 42
        let r = resolver(&lms, Scope::WithSubdepartments, Duration::from_secs(60));
        assert!(r.in_scope(Some("45")).await.unwrap());
        assert_eq!(r.departments().await.unwrap().len(), 3);

        let deep = Lms::new();
        deep.add_department("42", "Root", None);
        let mut parent = "42".to_string();
        for i in 0..10_000 {
            let id = format!("d{i}");
            deep.add_department(&id, &id, Some(&parent));
            parent = id;
        }
        let r = resolver(&deep, Scope::WithSubdepartments, Duration::from_secs(60));
        assert!(r.in_scope(Some("d9999")).await.unwrap());
    }

    #[tokio::test]
    async fn ttl_expiry_picks_up_a_new_subdepartment() {
        let lms = tree();
        let r = resolver(&lms, Scope::WithSubdepartments, Duration::from_millis(100));
        assert!(!r.in_scope(Some("46")).await.unwrap());
        lms.add_department("46", "New", Some("44"));
        assert!(!r.in_scope(Some("46")).await.unwrap(), "cached");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            r.in_scope(Some("46")).await.unwrap(),
            "refreshed after the TTL"
        );
        lms.add_department("47", "Newer", Some("42"));
        r.invalidate();
        assert!(
            r.in_scope(Some("47")).await.unwrap(),
            "invalidate drops the cache"
        );
    }

    #[tokio::test]
    async fn validate_source_explains_each_failure() {
        let lms = tree();
        let ok = resolver(&lms, Scope::DepartmentOnly, Duration::from_secs(1));
        assert_eq!(ok.validate_source().await.unwrap().name, "Engineering");
        let unknown = ScopeResolver::new(
            Arc::new(lms.clone()),
            "777",
            Scope::DepartmentOnly,
            Duration::from_secs(1),
        );
        let e = unknown.validate_source().await.unwrap_err();
        assert!(
            matches!(e, SourceCheckError::Unknown(_)) && e.to_string().contains("777"),
            "{e}"
        );
        let empty = ScopeResolver::new(
            Arc::new(lms.clone()),
            " ",
            Scope::DepartmentOnly,
            Duration::from_secs(1),
        );
        assert!(empty
            .validate_source()
            .await
            .unwrap_err()
            .to_string()
            .contains("empty"));
        lms.fail_next(1, crate::sandbox::skillsync::Fault::Unavailable);
        assert!(matches!(
            ok.validate_source().await,
            Err(SourceCheckError::Unreachable(_))
        ));
    }
}
