//! The sandbox org in-process: the [`SalesforceApi`] port with the same semantics,
//! counters and faults as over HTTP.

use async_trait::async_trait;

use super::schema::{describe, err};
use super::state::{
    collection_create, collection_update, delete_any, delete_external, get_record, ok_result,
    upsert_one, OrgState,
};
use super::Org;
use crate::salesforce::{
    ApiError, Describe, Record, SalesforceApi, SaveResult, SfError, UpsertResult,
};

impl Org {
    /// A Collections call in-process: one counted call per 200 items.
    pub(super) async fn chunked<T>(
        &self,
        endpoint: &str,
        items: &[T],
        all_or_none: bool,
        op: impl Fn(&mut OrgState, &T) -> Result<SaveResult, SfError> + Copy,
    ) -> Result<Vec<SaveResult>, SfError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(200) {
            self.enter(endpoint.to_string()).await?;
            out.extend(self.collection(all_or_none, chunk, op)?);
        }
        Ok(out)
    }

    pub(super) fn collection<T>(
        &self,
        all_or_none: bool,
        items: &[T],
        mut op: impl FnMut(&mut OrgState, &T) -> Result<SaveResult, SfError>,
    ) -> Result<Vec<SaveResult>, SfError> {
        if items.len() > 200 {
            return Err(err(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
                &[],
            ));
        }
        let mut s = self.state.lock().unwrap();
        let snapshot = all_or_none.then(|| s.records.clone());
        let mut results = Vec::with_capacity(items.len());
        let mut failed = false;
        for item in items {
            match op(&mut s, item) {
                Ok(r) => results.push(r),
                Err(e) => {
                    failed = true;
                    results.push(SaveResult {
                        id: None,
                        success: false,
                        errors: errors_of(&e),
                        created: None,
                    });
                }
            }
        }
        if failed {
            if let Some(snap) = snapshot {
                s.restore_records(snap);
                for r in results.iter_mut().filter(|r| r.success) {
                    *r = SaveResult {
                        id: None,
                        success: false,
                        errors: vec![ApiError { message: "Record rolled back because not all records were valid and the request was using AllOrNone header".into(), error_code: "ALL_OR_NONE_OPERATION_ROLLED_BACK".into(), fields: vec![] }],
                        created: None,
                    };
                }
            }
        }
        Ok(results)
    }
}

pub(super) fn errors_of(e: &SfError) -> Vec<ApiError> {
    match e {
        SfError::Permanent { errors, .. } => errors.clone(),
        SfError::Transient { code, message, .. } => vec![ApiError {
            message: message.clone(),
            error_code: code.clone(),
            fields: vec![],
        }],
        SfError::NotFound => vec![ApiError {
            message: "entity is deleted".into(),
            error_code: "ENTITY_IS_DELETED".into(),
            fields: vec![],
        }],
        SfError::MultipleMatches { ids } => vec![ApiError {
            message: format!("multiple records match: {ids:?}"),
            error_code: "DUPLICATE_EXTERNAL_ID".into(),
            fields: vec![],
        }],
    }
}

/// The in-process port: same semantics, same counters and faults as over HTTP.
#[async_trait]
impl SalesforceApi for Org {
    /// Counts one call per page (`set_page_size`), as `nextRecordsUrl` paging does.
    async fn query(&self, soql: &str) -> Result<Vec<Record>, SfError> {
        self.enter("GET query".into()).await?;
        let (rows, page_size) = {
            let s = self.state.lock().unwrap();
            (s.query(soql)?.0, s.page_size)
        };
        for _ in 1..rows.len().div_ceil(page_size) {
            self.enter("GET query".into()).await?;
        }
        Ok(rows)
    }
    async fn create(&self, sobject: &str, fields: &Record) -> Result<String, SfError> {
        self.enter(format!("POST sobjects/{sobject}")).await?;
        self.state.lock().unwrap().create(sobject, fields)
    }
    async fn get(&self, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError> {
        self.enter(format!("GET sobjects/{sobject}/{{id}}")).await?;
        get_record(&self.state.lock().unwrap(), sobject, id, fields)
    }
    async fn update(&self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError> {
        self.enter(format!("PATCH sobjects/{sobject}/{{id}}"))
            .await?;
        self.state.lock().unwrap().update(sobject, id, fields)
    }
    async fn delete(&self, sobject: &str, id: &str) -> Result<(), SfError> {
        self.enter(format!("DELETE sobjects/{sobject}/{{id}}"))
            .await?;
        self.state.lock().unwrap().delete(sobject, id)
    }
    async fn upsert(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError> {
        self.enter(format!("PATCH sobjects/{sobject}/{ext_field}"))
            .await?;
        self.state
            .lock()
            .unwrap()
            .upsert(sobject, ext_field, ext_id, fields)
    }
    async fn delete_by_external_id(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
    ) -> Result<(), SfError> {
        self.enter(format!("DELETE sobjects/{sobject}/{ext_field}"))
            .await?;
        delete_external(&mut self.state.lock().unwrap(), sobject, ext_field, ext_id)
    }
    async fn create_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked(
            "POST composite/sobjects",
            records,
            all_or_none,
            collection_create,
        )
        .await
    }
    async fn update_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked(
            "PATCH composite/sobjects",
            records,
            all_or_none,
            collection_update,
        )
        .await
    }
    async fn upsert_many(
        &self,
        sobject: &str,
        ext_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let endpoint = format!("PATCH composite/sobjects/{sobject}/{ext_field}");
        self.chunked(&endpoint, records, all_or_none, |s, r| {
            upsert_one(s, sobject, ext_field, r)
        })
        .await
    }
    async fn delete_many(
        &self,
        ids: &[String],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.chunked("DELETE composite/sobjects", ids, all_or_none, |s, id| {
            delete_any(s, id).map(|()| ok_result(id.clone(), None))
        })
        .await
    }
    async fn describe(&self, sobject: &str) -> Result<Describe, SfError> {
        self.enter(format!("GET sobjects/{sobject}/describe"))
            .await?;
        describe(sobject)
    }
}

pub(super) fn upsert_collection(
    org: &Org,
    sobject: &str,
    ext_field: &str,
    chunk: &[Record],
    all_or_none: bool,
) -> Result<Vec<SaveResult>, SfError> {
    org.collection(all_or_none, chunk, |s, r| {
        upsert_one(s, sobject, ext_field, r)
    })
}
