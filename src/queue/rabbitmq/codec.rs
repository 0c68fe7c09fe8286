//! How a [`Message`] and its bookkeeping travel as an AMQP message: persistent, the
//! webhook id as `message_id`, the receipt time as `timestamp` and
//! `x-syncback-received-at`, retry/DLQ facts in `x-syncback-*` headers (docs/rules.md R13).

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::queue::{DeadLetter, DeliveryMeta, Message, QueueError};

pub const H_ATTEMPTS: &str = "x-syncback-attempts";
pub const H_FIRST_FAILURE: &str = "x-syncback-first-failure-at";
pub const H_LAST_FAILURE: &str = "x-syncback-last-failure-at";
pub const H_REASON_KIND: &str = "x-syncback-reason-kind";
pub const H_REASON_MESSAGE: &str = "x-syncback-reason-message";
pub const H_LEARNER: &str = "x-syncback-learner-id";
pub const H_RECEIVED_AT: &str = "x-syncback-received-at";

pub(super) fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub(super) fn header_str(h: &FieldTable, key: &str) -> Option<String> {
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub(super) fn header_u32(h: &FieldTable, key: &str) -> Option<u32> {
    match h.inner().get(key)? {
        AMQPValue::LongInt(v) => Some(*v as u32),
        AMQPValue::LongLongInt(v) => Some(*v as u32),
        AMQPValue::ShortInt(v) => Some(*v as u32),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::ShortUInt(v) => Some(*v as u32),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

pub(super) fn header_time(h: &FieldTable, key: &str) -> Option<DateTime<Utc>> {
    header_str(h, key).and_then(|s| {
        DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// AMQP properties for a message with its bookkeeping headers.
pub(super) fn properties(msg: &Message, headers: FieldTable) -> BasicProperties {
    let mut headers = headers;
    headers.insert(
        H_RECEIVED_AT.into(),
        string(
            &msg.received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(msg.webhook_id.as_str()))
        .with_timestamp(msg.received_at.timestamp().max(0) as u64)
        .with_headers(headers)
}

/// Rebuild a [`Message`] from a delivery.
pub(super) fn decode(d: &lapin::message::Delivery) -> Result<Message, QueueError> {
    let envelope: serde_json::Value = serde_json::from_slice(&d.data)
        .map_err(|e| QueueError::BadMessage(format!("body is not JSON: {e}")))?;
    let empty = FieldTable::default();
    let headers = d.properties.headers().as_ref().unwrap_or(&empty);
    let webhook_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .or_else(|| {
            envelope
                .get("id")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    let received_at = header_time(headers, H_RECEIVED_AT)
        .or_else(|| {
            d.properties
                .timestamp()
                .and_then(|t| DateTime::from_timestamp(t as i64, 0))
        })
        .unwrap_or_else(Utc::now);
    Ok(Message {
        webhook_id,
        received_at,
        envelope,
    })
}

pub(super) fn meta_of(d: &lapin::message::Delivery) -> DeliveryMeta {
    let empty = FieldTable::default();
    let h = d.properties.headers().as_ref().unwrap_or(&empty);
    DeliveryMeta {
        attempts: header_u32(h, H_ATTEMPTS).unwrap_or(0),
        first_failure_at: header_time(h, H_FIRST_FAILURE),
        redelivered: d.redelivered || header_u32(h, "x-delivery-count").unwrap_or(0) > 0,
    }
}

pub(super) fn dead_letter_of(d: &lapin::message::Delivery) -> Result<DeadLetter, QueueError> {
    let message = decode(d)?;
    let empty = FieldTable::default();
    let h = d.properties.headers().as_ref().unwrap_or(&empty);
    // Dead-lettered by the broker itself (x-delivery-limit): no syncback headers.
    let broker_reason = header_str(h, "x-first-death-reason");
    Ok(DeadLetter {
        reason_kind: header_str(h, H_REASON_KIND)
            .or_else(|| broker_reason.as_ref().map(|r| format!("broker_{r}")))
            .unwrap_or_else(|| "unknown".into()),
        reason_message: header_str(h, H_REASON_MESSAGE).unwrap_or_else(|| {
            broker_reason
                .map(|r| format!("dead-lettered by RabbitMQ ({r}): the quorum queue's x-delivery-limit was reached"))
                .unwrap_or_default()
        }),
        attempts: header_u32(h, H_ATTEMPTS)
            .unwrap_or_else(|| header_u32(h, "x-delivery-count").unwrap_or(0)),
        first_failure_at: header_time(h, H_FIRST_FAILURE),
        last_failure_at: header_time(h, H_LAST_FAILURE),
        learner_id: header_str(h, H_LEARNER),
        message,
    })
}
