//! `fleet.redis_url` parsed: the fleet's Redis as a fixed address (`redis://host:port/db`) or
//! the primary Redis Sentinel names (`redis+sentinel://host:26379,host2:26379/mymaster[/db]`).
//! Here, in config, so a bad URL fails at start naming the key; `fleet::connection` connects.

/// The prefix of every fleet key in Redis when `fleet.key_prefix` is not set.
pub const DEFAULT_KEY_PREFIX: &str = "egress:";

/// Where the fleet's Redis is.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// A fixed address.
    Direct(String),
    /// The primary of `master`, as the sentinels at these `host:port`s name it.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: i64,
    },
}

impl RedisTarget {
    /// Reads `fleet.redis_url`.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            redis::Client::open(url).map_err(|e| format!("'{url}': {e}"))?;
            return Ok(RedisTarget::Direct(url.to_string()));
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| {
            format!("'{url}': expected redis+sentinel://host:port[,host:port...]/master_name[/db]")
        })?;
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_string()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("").to_string();
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse::<i64>()
                .map_err(|_| format!("'{url}': the database '{d}' is not a number"))?,
        };
        if sentinels.is_empty() || master.is_empty() {
            return Err(format!(
                "'{url}': expected redis+sentinel://host:port[,host:port...]/master_name[/db]"
            ));
        }
        Ok(RedisTarget::Sentinel {
            sentinels,
            master,
            db,
        })
    }
}
