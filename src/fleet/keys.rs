//! The names of every fleet key in Redis, all under `fleet.key_prefix` (default `egress:`), so
//! several fleets can share one Redis: each sees only its own nodes, records and reservations.
//!
//! ```text
//!   {p}nodes                 set of node ids          {p}node:{id}        a node's registration
//!   {p}records               hash of egress records   {p}owner:{egress}   an egress's owner
//!   {p}reserved:{id}         a node's reservations    {p}cand:{type}:idle|busy, {p}cand:max_budget
//!   {p}costs                 hash class -> learned estimate (JSON), shared by every node
//!   {p}costs:version         moves on at every change of {p}costs
//!   {p}capacity              the fleet's capacity figures (JSON), by whichever node holds
//!   {p}capacity:lock         ...this lock for the current refresh
//!   {p}events                pub/sub channel of every node's live events
//! ```

/// The key names of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// The prefix when `fleet.key_prefix` is not set.
pub const DEFAULT_PREFIX: &str = crate::config::DEFAULT_KEY_PREFIX;

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// What every key starts with (the scripts derive their keys from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The set of every node that ever registered (pruned lazily).
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// What each node's registration key starts with.
    pub fn node_prefix(&self) -> String {
        format!("{}node:", self.prefix)
    }

    pub fn node(&self, node_id: &str) -> String {
        format!("{}node:{node_id}", self.prefix)
    }

    pub fn records(&self) -> String {
        format!("{}records", self.prefix)
    }

    pub fn owner(&self, egress_id: &str) -> String {
        format!("{}owner:{egress_id}", self.prefix)
    }

    /// The fleet's learned cost table (`fleet::costs`).
    pub fn costs(&self) -> String {
        format!("{}costs", self.prefix)
    }

    /// Moves on at every change of `costs` (nodes read the table only when it moved).
    pub fn costs_version(&self) -> String {
        format!("{}costs:version", self.prefix)
    }

    /// The fleet's capacity figures, computed by one node per refresh (`fleet::capacity`).
    pub fn capacity(&self) -> String {
        format!("{}capacity", self.prefix)
    }

    /// Held by the node computing this refresh's capacity figures.
    pub fn capacity_lock(&self) -> String {
        format!("{}capacity:lock", self.prefix)
    }

    pub fn reserved(&self, node_id: &str) -> String {
        format!("{}reserved:{node_id}", self.prefix)
    }

    /// The pub/sub channel every node publishes its live events on (`fleet/events.rs`).
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
}
