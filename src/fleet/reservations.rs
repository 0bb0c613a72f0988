//! The fleet's placement decision, made inside Redis: one Lua script reads every live node's
//! published admission state, adds the reservations of placements still starting, scores each
//! node with the placer's scoring lines (`rules::scoring::curve`), and reserves the best node for
//! the job, all in one atomic step. Redis runs scripts one at a time, so a burst of placements
//! from any number of nodes sees each reservation at once, as if the requests came one by one,
//! and a decision costs one round trip instead of a round of HTTP calls.
//!
//! ```text
//!   egress:node:{node_id}       the node's registration: url + NodeState (published on every change)
//!   egress:reserved:{node_id}   hash egress_id -> "type cost until_ms"   (expiry: the latest reservation's)
//! ```
//!
//! A reservation counts on its node until the node reports the job among its `egress_ids` (the
//! job is in the node's own figures from then on), until the placer drops it (the node refused or
//! did not answer), or until it expires. After a 201 the placer shortens it to `node_ttl_ms`,
//! by when the node has published a state that counts the job.

use std::sync::LazyLock;

use redis::Script;

use crate::fleet::placement::Refusal;
use crate::rules::scoring::Curve;

pub const RESERVED_KEY_PREFIX: &str = "egress:reserved:";

pub fn reserved_key(node_id: &str) -> String {
    format!("{RESERVED_KEY_PREFIX}{node_id}")
}

/// What one placement asks of the script.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub egress_id: &'a str,
    pub egress_type: &'a str,
    /// The request's estimate in cores; None = each node's configured cost for the type.
    pub cost: Option<f64>,
    /// The placer's scoring lines for this type.
    pub curve: Curve,
    /// Breaks equal scores (a fresh random number per call).
    pub seed: u64,
    pub ttl_ms: u64,
    /// Nodes that refused or failed this placement already.
    pub excluded: &'a [String],
}

/// A node the script reserved for the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub node_id: String,
    pub url: String,
    pub score: f64,
}

/// A live node that cannot take the job, and the claims and reservations of other placements it
/// holds (of the type for `type_limit`, of every type otherwise): these may go away.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub node_id: String,
    pub why: Refusal,
    pub pending: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Reserved(Chosen),
    /// No live, not excluded node can take it.
    Nobody(Vec<Refused>),
}

/// The script's answer with the number of live nodes it saw (excluded ones included).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision: Decision,
    pub live: usize,
}

/// KEYS[1] = egress:nodes. ARGV = node key prefix, reservation key prefix, egress_id, type,
/// cost ("" = the node's own), seed, ttl_ms, idle base, idle slope, busy base, busy slope,
/// excluded node ids (space separated).
/// Returns {"reserved", live, node_id, url, score} or {"nobody", live, "node_id why pending", ...}.
/// The checks mirror `rules::admission::Ledger::check`: draining, then the type limit
/// (running + claims + reservations of the type), then CPU (cost <= headroom - reserved + 1e-9).
pub static PLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want, ttl = ARGV[4], tonumber(ARGV[7])
local ask_cost = tonumber(ARGV[5])
local ib, is, bb, bs = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local excluded = {}
for id in string.gmatch(ARGV[12], '%S+') do excluded[id] = true end
local function num(v) local n = tonumber(v); if n == nil or n ~= n then return 0 end; return n end
local live, refused = 0, {}
local best, best_key, best_score, best_url, best_cost
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[1] .. id)
  if not raw then
    redis.call('SREM', KEYS[1], id)
  else
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' and type(rec.state) == 'table' and type(rec.state.types) == 'table' then
      live = live + 1
      if not excluded[id] then
        local st = rec.state
        local running = {}
        if type(st.egress_ids) == 'table' then
          for _, e in ipairs(st.egress_ids) do running[e] = true end
        end
        -- Reservations of placements still starting; the ones the node reports, or that
        -- expired, or that an earlier round of this placement left, are dropped.
        local rkey = ARGV[2] .. id
        local res = redis.call('HGETALL', rkey)
        local rcost, rjobs, rsame = 0, 0, 0
        for i = 1, #res, 2 do
          local eid = res[i]
          local rt, rc, untl = string.match(res[i + 1], '^(%S+) (%S+) (%S+)$')
          if running[eid] or eid == ARGV[3] or not untl or num(untl) <= now then
            redis.call('HDEL', rkey, eid)
          else
            rcost = rcost + num(rc)
            rjobs = rjobs + 1
            if rt == want then rsame = rsame + 1 end
          end
        end
        local jobs, claims = rjobs, rjobs
        for _, ts in pairs(st.types) do
          jobs = jobs + num(ts.active) + num(ts.pending_claims)
          claims = claims + num(ts.pending_claims)
        end
        local ts = st.types[want]
        local cost = ask_cost
        if cost == nil and type(ts) == 'table' then cost = num(ts.cost) end
        if cost == nil or cost ~= cost or cost < 0 or cost == math.huge then cost = 0 end
        local avail = num(st.headroom_cpu) - rcost
        local why, pending = nil, claims
        if st.draining == true then
          why = 'draining'
        elseif type(ts) ~= 'table' then
          why = 'unavailable'
        elseif num(ts.limit) > 0 and num(ts.active) + num(ts.pending_claims) + rsame >= num(ts.limit) then
          why, pending = 'type_limit', num(ts.pending_claims) + rsame
        elseif cost > avail + 1e-9 then
          why = 'cpu'
        end
        if why then
          table.insert(refused, id .. ' ' .. why .. ' ' .. pending)
        else
          local budget, free = num(st.budget_cores), 0
          if budget > 0 and budget < math.huge then free = math.min(1, math.max(0, avail / budget)) end
          local score
          if jobs == 0 then score = ib + is * free else score = bb + bs * free end
          local key = redis.sha1hex(ARGV[6] .. id)
          if best == nil or score > best_score or (score == best_score and key < best_key) then
            best, best_key, best_score, best_url, best_cost = id, key, score, rec.url, cost
          end
        end
      end
    end
  end
end
if best then
  local rkey = ARGV[2] .. best
  redis.call('HSET', rkey, ARGV[3], want .. ' ' .. best_cost .. ' ' .. (now + ttl))
  -- The hash's expiry only ever moves later: placers may use different TTLs.
  if redis.call('PTTL', rkey) < ttl then redis.call('PEXPIRE', rkey, ttl) end
  return {'reserved', tostring(live), best, tostring(best_url), string.format('%.17g', best_score)}
end
local out = {'nobody', tostring(live)}
for _, r in ipairs(refused) do table.insert(out, r) end
return out
"#,
    )
});

/// Shortens a reservation to `ttl_ms` from now if it is still there (the job started: the node
/// counts it as soon as it publishes). KEYS[1] = reservation hash; ARGV = egress_id, ttl_ms.
pub static SHORTEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rt, rc = string.match(v, '^(%S+) (%S+) ')
if not rt then return redis.call('HDEL', KEYS[1], ARGV[1]) end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], rt .. ' ' .. rc .. ' ' .. (now + ttl))
-- node_ttl_ms may be longer than a short reservation_ttl_ms: as in PLACE, only ever later.
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#,
    )
});

impl Ask<'_> {
    /// The script invocation for this ask.
    pub fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut inv = PLACE.prepare_invoke();
        let cost = match self.cost {
            Some(c) if c.is_finite() && c >= 0.0 => c.to_string(),
            _ => String::new(),
        };
        let c = self.curve;
        inv.key(crate::fleet::registry::NODES_KEY)
            .arg(crate::fleet::registry::NODE_KEY_PREFIX)
            .arg(RESERVED_KEY_PREFIX)
            .arg(self.egress_id)
            .arg(self.egress_type)
            .arg(cost)
            .arg(self.seed.to_string())
            .arg(self.ttl_ms)
            .arg(c.idle.base)
            .arg(c.idle.slope)
            .arg(c.busy.base)
            .arg(c.busy.slope)
            .arg(self.excluded.join(" "));
        inv
    }
}

/// Reads the script's answer; None when it is not one (a Redis that runs something else).
pub fn parse(reply: &[String]) -> Option<Answer> {
    let live = reply.get(1)?.parse().ok()?;
    let decision = match reply.first()?.as_str() {
        "reserved" => Decision::Reserved(Chosen {
            node_id: reply.get(2)?.clone(),
            url: reply.get(3)?.clone(),
            score: reply.get(4)?.parse().ok()?,
        }),
        "nobody" => Decision::Nobody(
            reply[2..]
                .iter()
                .filter_map(|r| {
                    let mut it = r.split(' ');
                    let node_id = it.next()?.to_string();
                    let why = Refusal::parse(it.next());
                    let pending = it.next()?.parse::<f64>().ok()? as u32;
                    Some(Refused {
                        node_id,
                        why,
                        pending,
                    })
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(Answer { decision, live })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn answers_read_back() {
        let a = parse(&s(&["reserved", "3", "ND_a", "http://127.0.0.1:1", "0.75"])).unwrap();
        assert_eq!(a.live, 3);
        assert_eq!(
            a.decision,
            Decision::Reserved(Chosen {
                node_id: "ND_a".into(),
                url: "http://127.0.0.1:1".into(),
                score: 0.75
            })
        );
        let a = parse(&s(&["nobody", "2", "ND_a cpu 3", "ND_b draining 0"])).unwrap();
        assert_eq!(
            a.decision,
            Decision::Nobody(vec![
                Refused {
                    node_id: "ND_a".into(),
                    why: Refusal::Cpu,
                    pending: 3
                },
                Refused {
                    node_id: "ND_b".into(),
                    why: Refusal::Draining,
                    pending: 0
                },
            ])
        );
        assert_eq!(parse(&s(&["nobody", "0"])).unwrap().live, 0);
        assert!(parse(&s(&["what"])).is_none());
        assert!(parse(&s(&["reserved", "1", "ND_a"])).is_none());
    }
}
