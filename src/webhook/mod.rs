//! Inbound webhooks: Standard Webhooks signatures and the JSON Schema contract (docs/rules.md "Webhook contract").

pub mod schema;
pub mod signature;
