//! Connections: one AMQP connection with a confirm-mode publish channel, topology
//! declared on every (re)connect.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

use super::topology::Topology;
use crate::queue::QueueError;

pub(super) fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// One AMQP connection and a confirm-mode channel for publishing.
pub(super) struct Link {
    pub(super) conn: Arc<Connection>,
    pub(super) publish: Channel,
    /// Index in `queue.urls` of the node this link is connected to.
    pub(super) node: usize,
}

impl Link {
    pub(super) fn is_alive(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }

    /// The same connection with a fresh confirm channel (after a nack: a channel opened
    /// before a new quorum leader was elected can keep being nacked while a fresh one
    /// is accepted).
    pub(super) async fn reopened(&self) -> Result<Link, QueueError> {
        let _ = self.publish.close(200, "reopening after a nack").await;
        Ok(Link {
            conn: self.conn.clone(),
            publish: confirm_channel(&self.conn).await?,
            node: self.node,
        })
    }
}

/// A node URL for logs: the password never appears.
pub(super) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable queue url>".into(),
    }
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, QueueError> {
    let ch = conn.create_channel().await.map_err(unavailable)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(ch)
}

/// Connect to the first node that answers, trying `urls` in order from `start`
/// (docs/rules.md "Flow": a cluster is `queue.urls`), and declare the topology there.
pub(super) async fn open_link(
    urls: &[String],
    start: usize,
    topology: &Topology,
    name: &str,
) -> Result<Link, QueueError> {
    let mut last = None;
    for i in 0..urls.len() {
        let node = (start + i) % urls.len();
        match open_node(&urls[node], topology, name).await {
            Ok((conn, publish)) => {
                if urls.len() > 1 {
                    info!(node = %redact(&urls[node]), "connected to RabbitMQ node");
                }
                return Ok(Link {
                    conn: Arc::new(conn),
                    publish,
                    node,
                });
            }
            Err(e) => {
                if urls.len() > 1 {
                    warn!(node = %redact(&urls[node]), error = %e, "RabbitMQ node unavailable; trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| QueueError::Other("queue.urls is empty".into())))
}

async fn open_node(
    url: &str,
    topology: &Topology,
    name: &str,
) -> Result<(Connection, Channel), QueueError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    let conn = tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, props))
        .await
        .map_err(|_| unavailable("connecting to RabbitMQ timed out"))?
        .map_err(unavailable)?;
    let publish = confirm_channel(&conn).await?;
    if let Err(e) = topology.declare(&publish).await {
        let _ = conn.close(200, "topology").await;
        return Err(match &e {
            // 404 (a classic queue whose home node is down) and the like: the node is
            // usable later or another node is; PRECONDITION_FAILED is a configuration fault.
            lapin::Error::ProtocolError(p) if p.get_id() == 406 => QueueError::Other(format!(
                "declaring the topology failed: an existing queue has other arguments \
                 (queue.prefix, queue.retry_delays_secs, queue.delivery_limit, queue.urls): {e}"
            )),
            _ => unavailable(format!("declaring the topology failed: {e}")),
        });
    }
    Ok((conn, publish))
}
