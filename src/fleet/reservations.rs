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

use crate::fleet::keys::Keys;
use crate::rules::placement::Refusal;
use crate::rules::scoring::Curve;

/// What one placement asks of the script.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The fleet's key names.
    pub keys: &'a Keys,
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

/// Lua shared by the scripts that read a node or keep the candidate index: `num`, `node_view`
/// (a node's record plus its live reservations: what it can take now), `refusal` (the checks of
/// `rules::admission::Ledger::check`, in its order: draining, type limit, CPU) and `reindex`.
/// Every script that uses it sets `P` (the key prefix), `NOW` (ms) and `TYPES` first.
const LUA_COMMON: &str = r#"
local function num(v) local n = tonumber(v); if n == nil or n ~= n then return 0 end; return n end
-- A node as placement sees it, or nil when its registration is gone or unreadable. Drops the
-- reservations the node reports among its jobs, the expired ones, and `skip`'s (an earlier
-- round of the same placement).
local function node_view(id, skip)
  local raw = redis.call('GET', P .. 'node:' .. id)
  if not raw then return nil end
  local ok, rec = pcall(cjson.decode, raw)
  if not (ok and type(rec) == 'table' and type(rec.state) == 'table' and type(rec.state.types) == 'table') then
    return nil
  end
  local st = rec.state
  local running = {}
  if type(st.egress_ids) == 'table' then
    for _, e in ipairs(st.egress_ids) do running[e] = true end
  end
  local rkey = P .. 'reserved:' .. id
  local res = redis.call('HGETALL', rkey)
  local rcost, rjobs, rsame = 0, 0, {}
  for i = 1, #res, 2 do
    local eid = res[i]
    local rt, rc, untl = string.match(res[i + 1], '^(%S+) (%S+) (%S+)$')
    if running[eid] or eid == skip or not untl or num(untl) <= NOW then
      redis.call('HDEL', rkey, eid)
    else
      rcost = rcost + num(rc)
      rjobs = rjobs + 1
      rsame[rt] = (rsame[rt] or 0) + 1
    end
  end
  local jobs, claims = rjobs, rjobs
  for _, ts in pairs(st.types) do
    jobs = jobs + num(ts.active) + num(ts.pending_claims)
    claims = claims + num(ts.pending_claims)
  end
  local avail = num(st.headroom_cpu) - rcost
  local budget, free = num(st.budget_cores), 0
  if budget > 0 and budget < math.huge then free = math.min(1, math.max(0, avail / budget)) end
  return {rec = rec, st = st, avail = avail, jobs = jobs, claims = claims, rsame = rsame,
          budget = budget, free = free}
end
-- Why the node cannot take a job of type `want` (nil when it can), the claims and
-- reservations that may go away, and the cost it would be charged.
local function refusal(v, want, ask_cost)
  local st, ts = v.st, v.st.types[want]
  local cost = ask_cost
  if cost == nil and type(ts) == 'table' then cost = num(ts.cost) end
  if cost == nil or cost ~= cost or cost < 0 or cost == math.huge then cost = 0 end
  local rsame = v.rsame[want] or 0
  if st.draining == true then return 'draining', v.claims, cost end
  if type(ts) ~= 'table' then return 'unavailable', v.claims, cost end
  if num(ts.limit) > 0 and num(ts.active) + num(ts.pending_claims) + rsame >= num(ts.limit) then
    return 'type_limit', num(ts.pending_claims) + rsame, cost
  end
  if cost > v.avail + 1e-9 then return 'cpu', v.claims, cost end
  return nil, v.claims, cost
end
-- Puts the node in the candidate sets of every type it can take by draining and type limit
-- (CPU is checked per ask): `P cand:{type}:idle` or `:busy` by whether it runs or holds
-- anything, scored by its free ratio. A gone node (v == nil) leaves them all.
local function reindex(id, v)
  for t in string.gmatch(TYPES, '%S+') do
    local idle, busy = P .. 'cand:' .. t .. ':idle', P .. 'cand:' .. t .. ':busy'
    local ok = false
    if v then
      local ts = v.st.types[t]
      ok = v.st.draining ~= true and type(ts) == 'table'
        and not (num(ts.limit) > 0 and num(ts.active) + num(ts.pending_claims) + (v.rsame[t] or 0) >= num(ts.limit))
    end
    if ok and v.jobs == 0 then
      redis.call('ZADD', idle, v.free, id); redis.call('ZREM', busy, id)
    elseif ok then
      redis.call('ZADD', busy, v.free, id); redis.call('ZREM', idle, id)
    else
      redis.call('ZREM', idle, id); redis.call('ZREM', busy, id)
    end
  end
  if v and v.budget < math.huge and v.budget > num(redis.call('GET', P .. 'cand:max_budget')) then
    redis.call('SET', P .. 'cand:max_budget', string.format('%.17g', v.budget))
  end
end
"#;

/// A script whose ARGV starts with the key prefix and the types, with `P`, `TYPES`, `NOW` and the
/// shared functions (`LUA_COMMON`) defined before `body`.
fn with_common(body: &str) -> Script {
    Script::new(&format!(
        r#"
local P, TYPES = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
{LUA_COMMON}
{body}"#
    ))
}

/// Publishes (or, with an empty record, removes) a node's registration and keeps the candidate
/// index in step. ARGV = prefix, types, node id, record JSON ("" = remove), ttl_ms.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local id = ARGV[3]
if ARGV[4] == '' then
  redis.call('DEL', P .. 'node:' .. id)
  redis.call('SREM', P .. 'nodes', id)
  reindex(id, nil)
  return 0
end
redis.call('SET', P .. 'node:' .. id, ARGV[4], 'PX', tonumber(ARGV[5]))
redis.call('SADD', P .. 'nodes', id)
reindex(id, node_view(id, nil))
return 1
"#,
    )
});

/// Drops a placement's reservation on a node that did not take the job, and re-indexes the
/// node. ARGV = prefix, types, node id, egress id.
pub static DROP: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local n = redis.call('HDEL', P .. 'reserved:' .. ARGV[3], ARGV[4])
reindex(ARGV[3], node_view(ARGV[3], nil))
return n
"#,
    )
});

/// The decision. ARGV = prefix, types, egress_id, type, cost ("" = the node's own), seed,
/// ttl_ms, idle base, idle slope, busy base, busy slope, excluded node ids (space separated).
/// Returns {"reserved", live, node_id, url, score} or {"nobody", live, "node_id why pending", ...}.
///
/// It reads the candidate index, not every node: for each of the type's two sets (idle, busy)
/// it walks the nodes in the order of the mode's line for that set (best free ratio first),
/// one block of equal ratios at a time, starting each block at a random member (equal scores
/// are broken at random), and takes the first node that really fits (its record and
/// reservations checked as the full rules do). A set where the line falls is walked from the
/// first ratio that could hold the cost on the largest budget. Only when no candidate fits (or a
/// walk visits `MAX_VISITS` nodes) does it read every node, which also names each refusal.
pub static PLACE: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local MAX_VISITS = 64
local eid, want, seed, ttl = ARGV[3], ARGV[4], ARGV[6], tonumber(ARGV[7])
local ask_cost = tonumber(ARGV[5])
local lines = { {'idle', tonumber(ARGV[8]), tonumber(ARGV[9])}, {'busy', tonumber(ARGV[10]), tonumber(ARGV[11])} }
local excluded = {}
for id in string.gmatch(ARGV[12], '%S+') do excluded[id] = true end
local best
local function consider(id, v, score, cost)
  local key = redis.sha1hex(seed .. id)
  if best == nil or score > best.score or (score == best.score and key < best.key) then
    best = {id = id, v = v, score = score, key = key, cost = cost}
  end
end
local function line_of(v)
  if v.jobs == 0 then return lines[1] end
  return lines[2]
end
local stale, visits, gave_up = {}, 0, false
local max_budget = num(redis.call('GET', P .. 'cand:max_budget'))
for _, l in ipairs(lines) do
  local zkey, base, slope = P .. 'cand:' .. want .. ':' .. l[1], l[2], l[3]
  local n = redis.call('ZCARD', zkey)
  local function at(r)
    local m
    if slope >= 0 then m = redis.call('ZREVRANGE', zkey, r, r, 'WITHSCORES')
    else m = redis.call('ZRANGE', zkey, r, r, 'WITHSCORES') end
    return m[1], m[2]
  end
  local r = 0
  if slope < 0 and ask_cost ~= nil and ask_cost > 0 and max_budget > 0 then
    r = redis.call('ZCOUNT', zkey, '-inf', '(' .. string.format('%.17g', ask_cost / max_budget))
  end
  local found = false
  while r < n and not found do
    local first, fs = at(r)
    if not first then break end
    local f = tonumber(fs)
    if best and base + slope * f < best.score - 1e-12 then break end
    local cnt = redis.call('ZCOUNT', zkey, fs, fs)
    if cnt < 1 then cnt = 1 end
    local start = tonumber(string.sub(redis.sha1hex(seed .. zkey .. fs), 1, 8), 16) % cnt
    for j = 0, cnt - 1 do
      local id = at(r + (start + j) % cnt)
      if id and not excluded[id] then
        visits = visits + 1
        local v = node_view(id, eid)
        if v == nil then
          table.insert(stale, id)
        else
          local why, _, cost = refusal(v, want, ask_cost)
          if v.free ~= f or line_of(v)[1] ~= l[1] then table.insert(stale, id) end
          if not why then
            local ln = line_of(v)
            consider(id, v, ln[2] + ln[3] * v.free, cost)
            found = true
            break
          end
        end
        if visits >= MAX_VISITS then gave_up = true; break end
      end
    end
    if gave_up then break end
    r = r + cnt
  end
  if gave_up then break end
end
local live = redis.call('SCARD', P .. 'nodes')
local refused = {}
if best == nil or gave_up then
  -- Every node: the exact best, or each node's refusal (and dead nodes leave the set).
  best, live = nil, 0
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
    local v = node_view(id, eid)
    if v == nil then
      if redis.call('EXISTS', P .. 'node:' .. id) == 0 then redis.call('SREM', P .. 'nodes', id) end
      table.insert(stale, id)
    else
      live = live + 1
      if not excluded[id] then
        local why, pending, cost = refusal(v, want, ask_cost)
        if why then
          table.insert(refused, id .. ' ' .. why .. ' ' .. pending)
        else
          local ln = line_of(v)
          consider(id, v, ln[2] + ln[3] * v.free, cost)
        end
      end
    end
  end
end
for _, id in ipairs(stale) do reindex(id, node_view(id, nil)) end
if best then
  local rkey = P .. 'reserved:' .. best.id
  redis.call('HSET', rkey, eid, want .. ' ' .. best.cost .. ' ' .. (NOW + ttl))
  -- The hash's expiry only ever moves later: placers may use different TTLs.
  if redis.call('PTTL', rkey) < ttl then redis.call('PEXPIRE', rkey, ttl) end
  reindex(best.id, node_view(best.id, nil))
  return {'reserved', tostring(live), best.id, tostring(best.v.rec.url), string.format('%.17g', best.score)}
end
local out = {'nobody', tostring(live)}
for _, x in ipairs(refused) do table.insert(out, x) end
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

/// The egress types the candidate index keeps sets for, as the scripts take them.
fn types_arg() -> String {
    crate::model::EgressType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Publishes a node's registration (its record JSON, expiring after `ttl_ms`) and re-indexes
/// it; with `record` None, removes it.
pub fn publish(
    keys: &Keys,
    node_id: &str,
    record: Option<&str>,
    ttl_ms: u64,
) -> redis::ScriptInvocation<'static> {
    let mut inv = PUBLISH.prepare_invoke();
    inv.arg(keys.prefix())
        .arg(types_arg())
        .arg(node_id)
        .arg(record.unwrap_or(""))
        .arg(ttl_ms);
    inv
}

/// Drops `egress_id`'s reservation on `node_id` and re-indexes the node.
pub fn drop_reservation(
    keys: &Keys,
    node_id: &str,
    egress_id: &str,
) -> redis::ScriptInvocation<'static> {
    let mut inv = DROP.prepare_invoke();
    inv.arg(keys.prefix())
        .arg(types_arg())
        .arg(node_id)
        .arg(egress_id);
    inv
}

impl Ask<'_> {
    /// The script invocation for this ask.
    pub fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut inv = PLACE.prepare_invoke();
        let cost = match self.cost {
            Some(c) if c.is_finite() && c >= 0.0 => c.to_string(),
            _ => String::new(),
        };
        let c = self.curve;
        inv.arg(self.keys.prefix())
            .arg(types_arg())
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
