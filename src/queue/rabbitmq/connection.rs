//! Connections: one AMQP connection with a confirm-mode publish channel, topology
//! declared on every (re)connect.

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::topology::Topology;
use crate::queue::QueueError;

pub(super) fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// One AMQP connection and a confirm-mode channel for publishing.
pub(super) struct Link {
    pub(super) conn: Connection,
    pub(super) publish: Channel,
}

pub(super) async fn open_link(
    url: &str,
    topology: &Topology,
    name: &str,
) -> Result<Link, QueueError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
        .await
        .map_err(|_| unavailable("connecting to RabbitMQ timed out"))?
        .map_err(unavailable)?;
    let publish = conn.create_channel().await.map_err(unavailable)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    topology.declare(&publish).await.map_err(|e| {
        QueueError::Other(format!(
            "declaring the topology failed (an existing queue with other arguments?): {e}"
        ))
    })?;
    Ok(Link { conn, publish })
}
