//! The connection to the fleet's Redis: a fixed address (`redis://host:port/db`), or the primary
//! that Redis Sentinel names (`redis+sentinel://host:26379,host2:26379/mymaster[/db]`).
//!
//! ```text
//!   Connections ── current: (Client, ConnectionManager) ── reconnects on its own, with
//!        │                                                   exponential backoff and jitter
//!        └── refresh(): ask the sentinels for the primary again; if it moved, connect to
//!            the new one and swap (called when a heartbeat fails)
//! ```
//!
//! Scripts need nothing after a failover: every script call is `EVALSHA`, and a Redis that does
//! not know the script (a promoted replica, a restarted server) answers `NOSCRIPT`, on which the
//! client loads it and calls again.

use std::sync::RwLock;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use tokio::sync::oneshot;

pub use crate::config::RedisTarget as Target;

impl Target {
    /// A client for the Redis to use now (for Sentinel: the primary it names now).
    pub async fn resolve(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Direct(url) => redis::Client::open(url.as_str()),
            Target::Sentinel {
                sentinels,
                master,
                db,
            } => {
                let urls: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
                let info = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(*db));
                let mut sc = SentinelClient::build(
                    urls,
                    master.clone(),
                    Some(info),
                    SentinelServerType::Master,
                )?;
                sc.async_get_client().await
            }
        }
    }
}

/// The shared connection (and the client placement connections are opened from), swapped when
/// Sentinel names a new primary.
pub struct Connections {
    target: Target,
    cfg: ConnectionManagerConfig,
    current: RwLock<(redis::Client, ConnectionManager)>,
}

impl Connections {
    /// Connects to the target's Redis now.
    pub async fn open(target: Target, cfg: ConnectionManagerConfig) -> Result<Connections, String> {
        let client = target.resolve().await.map_err(|e| e.to_string())?;
        let manager = connect_on_own_thread(client.clone(), cfg.clone()).await?;
        Ok(Connections {
            target,
            cfg,
            current: RwLock::new((client, manager)),
        })
    }

    /// The shared connection (a cheap clone; it reconnects on its own).
    pub fn con(&self) -> ConnectionManager {
        match self.current.read() {
            Ok(g) => g.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }

    /// The client of the Redis in use (for connections of one's own).
    pub fn client(&self) -> redis::Client {
        match self.current.read() {
            Ok(g) => g.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// With Sentinel: asks for the primary again and, if it is another server, connects to it.
    /// Returns whether the connection moved.
    pub async fn refresh(&self) -> Result<bool, String> {
        if matches!(self.target, Target::Direct(_)) {
            return Ok(false);
        }
        let client = self.target.resolve().await.map_err(|e| e.to_string())?;
        if client.get_connection_info().addr() == self.client().get_connection_info().addr() {
            return Ok(false);
        }
        let manager = connect_on_own_thread(client.clone(), self.cfg.clone()).await?;
        if let Ok(mut g) = self.current.write() {
            *g = (client, manager);
        }
        Ok(true)
    }

    /// Where the connection goes now (`host:port`), for logs.
    pub fn addr(&self) -> String {
        self.client().get_connection_info().addr().to_string()
    }
}

/// Opens the connection on a thread of its own, which then does nothing but Redis I/O. The
/// connection's driver runs where it was created; on the service's arbiter it would wait behind
/// the actors (handler launches, CPU sampling), and every placement decision with it.
async fn connect_on_own_thread(
    client: redis::Client,
    cfg: ConnectionManagerConfig,
) -> Result<ConnectionManager, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("fleet-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the Redis I/O thread: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let r = client.get_connection_manager_with_config(cfg).await;
                let failed = r.is_err();
                let _ = tx.send(r.map_err(|e| e.to_string()));
                if !failed {
                    // Lives as long as the process: the connection's driver runs here.
                    std::future::pending::<()>().await;
                }
            });
        })
        .map_err(|e| format!("cannot start the Redis I/O thread: {e}"))?;
    rx.await
        .map_err(|_| "the Redis I/O thread ended".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_read() {
        assert_eq!(
            Target::parse("redis+sentinel://a:26379,b/mymaster/2").unwrap(),
            Target::Sentinel {
                sentinels: vec!["a:26379".into(), "b:26379".into()],
                master: "mymaster".into(),
                db: 2
            }
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0").unwrap(),
            Target::Direct("redis://127.0.0.1:6379/0".into())
        );
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel:///m",
            "redis+sentinel://a/m/x",
            "nonsense",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
