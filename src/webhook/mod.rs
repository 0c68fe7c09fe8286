//! Inbound webhooks: Standard Webhooks signatures and the JSON Schema contract (SPEC §2).

pub mod schema;
pub mod signature;
