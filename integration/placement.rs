//! The fleet's placement script (`fleet::reservations::PLACE`) run by a real redis-server
//! against the Rust rules it mirrors: for random fleets it must choose a node with the best
//! `rules::scoring` score, refuse exactly where `rules::admission` refuses, count its own
//! reservations so a burst is placed as evenly as one request at a time, drop reservations the
//! node reports or that expired, and break ties at random.
//!
//! The node states are published the way a node publishes its own (`NodeState` from a
//! `Ledger`), so no service process is needed here; `fleet.rs` runs the real binaries.

use std::collections::HashMap;
use std::time::Duration;

use egress_engine::config::{AffinityMode, Config, LimitsConfig};
use egress_engine::fleet::keys::Keys;
use egress_engine::fleet::placement::Refusal;
use egress_engine::fleet::reservations::{self, Answer, Ask, Decision, SHORTEN};
use egress_engine::model::{EgressType, now_ms};
use egress_engine::rules::admission::Ledger;
use egress_engine::rules::scoring::{curve, score};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

const MODES: [AffinityMode; 3] = [
    AffinityMode::Pack,
    AffinityMode::Spread,
    AffinityMode::TypeAware,
];

fn ledger(id: &str, capacity: f64, limits: LimitsConfig) -> Ledger {
    let cfg = Config::default();
    Ledger::new(
        id.into(),
        capacity,
        &cfg.cpu,
        &cfg.cpu_cost,
        &limits,
        600_000,
    )
}

/// Writes the node's registration as its heartbeat does.
fn publish(con: &mut redis::Connection, l: &Ledger, now: u64) {
    let id = l.node_id();
    let _: i64 = egress_engine::fleet::registry::publish(
        &Keys::default(),
        id,
        &format!("http://{id}.invalid"),
        &l.state(now),
        600_000,
    )
    .invoke(con)
    .unwrap();
}

struct Placer<'a> {
    con: &'a mut redis::Connection,
    mode: AffinityMode,
    rng: StdRng,
}

impl Placer<'_> {
    fn place(
        &mut self,
        egress_id: &str,
        t: EgressType,
        cost: Option<f64>,
        ttl_ms: u64,
        excluded: &[String],
    ) -> Answer {
        let ask = Ask {
            keys: &Keys::default(),
            egress_id,
            egress_type: t.as_str(),
            cost,
            curve: curve(self.mode, t),
            seed: self.rng.random(),
            ttl_ms,
            excluded,
        };
        let reply: Vec<String> = ask.invocation().invoke(self.con).unwrap();
        reservations::parse(&reply).unwrap_or_else(|| panic!("unreadable answer {reply:?}"))
    }

    fn reserved_on(&mut self, egress_id: &str, t: EgressType, cost: Option<f64>) -> String {
        self.reserved_for(egress_id, t, cost, 60_000)
    }

    /// The node reserved for `egress_id` for `ttl_ms`.
    fn reserved_for(
        &mut self,
        egress_id: &str,
        t: EgressType,
        cost: Option<f64>,
        ttl_ms: u64,
    ) -> String {
        match self.place(egress_id, t, cost, ttl_ms, &[]).decision {
            Decision::Reserved(c) => c.node_id,
            d => panic!("{egress_id} not placed: {d:?}"),
        }
    }
}

fn flush(con: &mut redis::Connection) {
    let () = redis::cmd("FLUSHDB").query(con).unwrap();
}

fn any_type(rng: &mut StdRng) -> EgressType {
    EgressType::ALL[rng.random_range(0..EgressType::ALL.len())]
}

/// A node with random jobs, claims, measurements, limits and draining.
fn random_node(rng: &mut StdRng, i: usize, now: u64) -> Ledger {
    let mut limits = LimitsConfig::default();
    for t in EgressType::ALL {
        if rng.random_bool(0.3) {
            let n = rng.random_range(1..4);
            match t {
                EgressType::RoomComposite => limits.max_concurrent_room_composite = n,
                EgressType::Web => limits.max_concurrent_web = n,
                EgressType::Participant => limits.max_concurrent_participant = n,
                EgressType::TrackComposite => limits.max_concurrent_track_composite = n,
                EgressType::Track => limits.max_concurrent_track = n,
            }
        }
    }
    let capacity = [1.0, 2.0, 4.0, 8.0, 16.0][rng.random_range(0..5)];
    let mut l = ledger(&format!("ND_{i}"), capacity, limits);
    for j in 0..rng.random_range(0..8) {
        let t = any_type(rng);
        let cost = rng.random_range(0.05..3.0);
        if rng.random_bool(0.7) {
            let id = format!("EG_{i}_{j}");
            if l.admit(now, &id, t, cost, None).is_ok() && rng.random_bool(0.3) {
                l.measure(&id, rng.random_range(0.0..4.0));
            }
        } else {
            let _ = l.take_claim(now, t, cost);
        }
    }
    l.set_draining(rng.random_bool(0.1));
    l
}

/// Random fleets of `sizes` nodes, `cases` asks each: the script must choose a node with the
/// best score by the Rust rules, or refuse exactly where every node's rules refuse. Each
/// reservation is dropped (and the node re-indexed) after the ask, so every ask sees exactly the
/// published states. Returns (reserved, refused, zero-cost asks of over-budget nodes).
fn differential(
    seed: u64,
    sizes: std::ops::Range<usize>,
    fleets: usize,
    asks: usize,
) -> (u32, u32, usize) {
    let redis = Redis::start();
    let mut con = redis.connect();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut reserved, mut refused, mut zero_over_budget) = (0, 0, 0);
    for fleet in 0..fleets {
        flush(&mut con);
        let now = now_ms();
        let nodes: Vec<Ledger> = (0..rng.random_range(sizes.clone()))
            .map(|i| random_node(&mut rng, i, now))
            .collect();
        for l in &nodes {
            publish(&mut con, l, now);
        }
        for case in 0..asks {
            let mode = MODES[rng.random_range(0..3)];
            let t = any_type(&mut rng);
            // A request's own estimate, sometimes 0: a node over its budget refuses even that.
            let cost = match rng.random_range(0..4) {
                0 | 1 => None,
                2 => Some(0.0),
                _ => Some(rng.random_range(0.05..4.0)),
            };
            if cost == Some(0.0) {
                zero_over_budget += nodes.iter().filter(|l| l.available(now) < 0.0).count();
            }
            // What each node's own rules say.
            let expected: Vec<(f64, Option<&'static str>)> = nodes
                .iter()
                .map(|l| {
                    let c = cost.unwrap_or_else(|| l.cost_of(t));
                    let check = l.check(now, t, c, None);
                    let s = score(mode, t, &l.score_input(now, check.is_ok()));
                    (s, check.err().map(|e| e.reason()))
                })
                .collect();
            let best = expected.iter().map(|e| e.0).fold(-1.0, f64::max);
            let seed = rng.random();
            let mut placer = Placer {
                con: &mut con,
                mode,
                rng: StdRng::seed_from_u64(seed),
            };
            let answer = placer.place("EG_new", t, cost, 60_000, &[]);
            let ctx = format!(
                "fleet {fleet} ({} nodes) case {case}: {mode:?} {t} cost {cost:?} best {best}",
                nodes.len()
            );
            assert_eq!(answer.live, nodes.len(), "{ctx}");
            match answer.decision {
                Decision::Reserved(c) => {
                    reserved += 1;
                    let i: usize = c.node_id[3..].parse().unwrap();
                    assert!(best >= 0.0, "{ctx}: reserved {c:?}");
                    assert!(
                        (expected[i].0 - best).abs() < 1e-12 && (c.score - best).abs() < 1e-12,
                        "{ctx}: chose {c:?} scoring {:?}",
                        expected[i]
                    );
                    let held: HashMap<String, String> = redis::cmd("HGETALL")
                        .arg(Keys::default().reserved(&c.node_id))
                        .query(&mut con)
                        .unwrap();
                    assert!(
                        held["EG_new"].starts_with(&format!("{t} ")),
                        "{ctx}: {held:?}"
                    );
                    let _: i64 =
                        reservations::drop_reservation(&Keys::default(), &c.node_id, "EG_new")
                            .invoke(&mut con)
                            .unwrap();
                }
                Decision::Nobody(why) => {
                    refused += 1;
                    assert!(best < 0.0, "{ctx}: nobody {why:?}");
                    assert_eq!(why.len(), nodes.len(), "{ctx}");
                    for r in why {
                        let i: usize = r.node_id[3..].parse().unwrap();
                        assert_eq!(Some(r.why.as_str()), expected[i].1, "{ctx}: {}", r.node_id);
                    }
                }
            }
        }
    }
    (reserved, refused, zero_over_budget)
}

#[test]
fn the_script_chooses_what_the_rust_rules_choose() {
    let (reserved, refused, zero_over_budget) = differential(20261122, 1..7, 300, 1);
    // Both outcomes were exercised, plenty of times.
    assert!(reserved > 50 && refused > 20, "{reserved} / {refused}");
    assert!(
        zero_over_budget > 10,
        "{zero_over_budget} zero-cost asks of over-budget nodes"
    );
}

/// The scale benchmark's fleets (`scripts/bench-fleet-scale`), small enough for a test: the
/// candidate index must pick what a look at every node would.
#[test]
fn at_fleet_scale_the_indexed_script_chooses_what_the_rust_rules_choose() {
    for (sizes, fleets) in [(10..11, 6), (100..101, 3), (300..301, 1)] {
        let (reserved, refused, _) = differential(7 + fleets as u64, sizes.clone(), fleets, 60);
        assert!(
            reserved > 20 * fleets as u32,
            "{sizes:?}: {reserved} / {refused}"
        );
    }
}

#[test]
fn reservations_make_a_burst_as_even_as_one_request_at_a_time() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let now = now_ms();

    // spread: 8 equal nodes of budget 6.4 cores, 51 jobs of 0.5: max - min <= 1.
    for l in (0..8).map(|i| ledger(&format!("ND_{i}"), 8.0, LimitsConfig::default())) {
        publish(&mut con, &l, now);
    }
    let mut placer = Placer {
        con: &mut con,
        mode: AffinityMode::Spread,
        rng: StdRng::seed_from_u64(1),
    };
    let mut per: HashMap<String, usize> = HashMap::new();
    for j in 0..51 {
        let n = placer.reserved_on(&format!("EG_s{j}"), EgressType::Track, Some(0.5));
        *per.entry(n).or_default() += 1;
    }
    let (max, min) = (per.values().max().unwrap(), per.values().min().unwrap());
    assert!(per.len() == 8 && max - min <= 1, "spread: {per:?}");
    // The budget is 12 such jobs per node: the 97th does not fit anywhere, by CPU.
    for j in 51..96 {
        placer.reserved_on(&format!("EG_s{j}"), EgressType::Track, Some(0.5));
    }
    match placer
        .place("EG_full", EgressType::Track, Some(0.5), 60_000, &[])
        .decision
    {
        Decision::Nobody(why) => {
            assert!(
                why.iter().all(|r| r.why == Refusal::Cpu && r.pending == 12),
                "{why:?}"
            )
        }
        d => panic!("a full fleet reserved {d:?}"),
    }

    // pack: 4 nodes of 6 jobs each, 14 jobs: 6, 6, 2, 0.
    flush(placer.con);
    for l in (0..4).map(|i| ledger(&format!("ND_{i}"), 4.0, LimitsConfig::default())) {
        publish(placer.con, &l, now);
    }
    placer.mode = AffinityMode::Pack;
    let mut per: HashMap<String, usize> = HashMap::new();
    for j in 0..14 {
        let n = placer.reserved_on(&format!("EG_p{j}"), EgressType::Track, Some(0.5));
        *per.entry(n).or_default() += 1;
    }
    let mut counts: Vec<usize> = per.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(counts, vec![6, 6, 2], "pack: {per:?}");

    // A type limit counts reservations of the type: 2 participants per node on 2 nodes.
    flush(placer.con);
    let limits = LimitsConfig {
        max_concurrent_participant: 2,
        ..LimitsConfig::default()
    };
    for i in 0..2 {
        publish(
            placer.con,
            &ledger(&format!("ND_{i}"), 16.0, limits.clone()),
            now,
        );
    }
    placer.mode = AffinityMode::Spread;
    for j in 0..4 {
        placer.reserved_on(&format!("EG_l{j}"), EgressType::Participant, None);
    }
    match placer
        .place("EG_l4", EgressType::Participant, None, 60_000, &[])
        .decision
    {
        Decision::Nobody(why) => assert!(
            why.iter()
                .all(|r| r.why == Refusal::TypeLimit && r.pending == 2),
            "{why:?}"
        ),
        d => panic!("over the type limit: {d:?}"),
    }
    // Other types still fit.
    placer.reserved_on("EG_t", EgressType::Track, None);
}

#[test]
fn reservations_end_when_the_node_reports_the_job_or_they_expire() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let now = now_ms();
    // One node with room for exactly two 1-core jobs (budget 0.8 * 2.5 = 2).
    let mut l = ledger("ND_0", 2.5, LimitsConfig::default());
    publish(&mut con, &l, now);
    let mut placer = Placer {
        con: &mut con,
        mode: AffinityMode::Spread,
        rng: StdRng::seed_from_u64(2),
    };
    placer.reserved_on("EG_a", EgressType::Track, Some(1.0));
    placer.reserved_on("EG_b", EgressType::Track, Some(1.0));
    assert!(matches!(
        placer
            .place("EG_c", EgressType::Track, Some(1.0), 60_000, &[])
            .decision,
        Decision::Nobody(_)
    ));
    // The node admits EG_a and reports it: the job counts once, through the node's own figures.
    l.admit(now, "EG_a", EgressType::Track, 1.0, None).unwrap();
    publish(placer.con, &l, now);
    assert!(matches!(
        placer
            .place("EG_c", EgressType::Track, Some(1.0), 60_000, &[])
            .decision,
        Decision::Nobody(_)
    ));
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg(Keys::default().reserved("ND_0"))
        .query(placer.con)
        .unwrap();
    assert_eq!(held, vec!["EG_b".to_string()]);
    // EG_a ends on the node; EG_b's start never happens: its reservation lapses (here after
    // 300 ms), and then two jobs fit again.
    l.end_job("EG_a");
    publish(placer.con, &l, now);
    let () = redis::cmd("DEL")
        .arg(Keys::default().reserved("ND_0"))
        .query(placer.con)
        .unwrap();
    placer.reserved_for("EG_b", EgressType::Track, Some(1.0), 300);
    placer.reserved_on("EG_d", EgressType::Track, Some(1.0));
    wait_for(
        Duration::from_secs(5),
        "the 300 ms reservation to lapse",
        || match placer
            .place("EG_e", EgressType::Track, Some(1.0), 60_000, &[])
            .decision
        {
            Decision::Reserved(_) => Some(()),
            Decision::Nobody(_) => None,
        },
    );
    // Excluded nodes are not considered; a node without a registration is not live.
    let answer = placer.place(
        "EG_f",
        EgressType::Track,
        Some(0.1),
        60_000,
        &["ND_0".into()],
    );
    assert_eq!(answer.live, 1);
    assert!(matches!(answer.decision, Decision::Nobody(ref w) if w.is_empty()));
    let () = redis::cmd("DEL")
        .arg(Keys::default().node("ND_0"))
        .query(placer.con)
        .unwrap();
    assert_eq!(
        placer
            .place("EG_g", EgressType::Track, Some(0.1), 60_000, &[])
            .live,
        0
    );
}

#[test]
fn a_short_reservation_never_expires_a_longer_one() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let l = ledger("ND_0", 8.0, LimitsConfig::default());
    publish(&mut con, &l, now_ms());
    let mut placer = Placer {
        con: &mut con,
        mode: AffinityMode::Spread,
        rng: StdRng::seed_from_u64(3),
    };
    let key = Keys::default().reserved("ND_0");
    let pttl =
        |con: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(&key).query(con).unwrap() };
    // Placers with different reservation_ttl_ms: the hash's expiry only ever moves later.
    placer.reserved_on("EG_long", EgressType::Track, Some(1.0));
    placer.reserved_for("EG_short", EgressType::Track, Some(1.0), 300);
    let left = pttl(placer.con);
    assert!(
        left > 50_000,
        "the hash expires in {left} ms, before EG_long's 60 s"
    );
    let shorten = |con: &mut redis::Connection, id: &str, ttl_ms: u64| -> i64 {
        SHORTEN.key(&key).arg(id).arg(ttl_ms).invoke(con).unwrap()
    };
    // Shortening EG_short to a node TTL longer than the hash's own lifetime extends the hash.
    assert_eq!(shorten(placer.con, "EG_short", 90_000), 1);
    let left = pttl(placer.con);
    assert!(
        left > 80_000,
        "the hash expires in {left} ms, before EG_short's 90 s"
    );
    // Shortening a reservation that is gone does nothing.
    assert_eq!(shorten(placer.con, "EG_gone", 1), 0);
}

#[test]
fn equal_scores_are_broken_at_random() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let now = now_ms();
    // Four equal nodes and a busier one; each placement's reservation is dropped again, so every
    // decision sees the same fleet.
    for i in 0..4 {
        publish(
            &mut con,
            &ledger(&format!("ND_{i}"), 8.0, LimitsConfig::default()),
            now,
        );
    }
    let mut busy = ledger("ND_4", 8.0, LimitsConfig::default());
    busy.admit(now, "EG_x", EgressType::Track, 2.0, None)
        .unwrap();
    publish(&mut con, &busy, now);
    let mut placer = Placer {
        con: &mut con,
        mode: AffinityMode::Spread,
        rng: StdRng::seed_from_u64(3),
    };
    let mut wins: HashMap<String, u32> = HashMap::new();
    let n = 800;
    for _ in 0..n {
        let on = placer.reserved_on("EG_t", EgressType::Track, Some(0.5));
        let () = redis::cmd("HDEL")
            .arg(Keys::default().reserved(&on))
            .arg("EG_t")
            .query(placer.con)
            .unwrap();
        *wins.entry(on).or_default() += 1;
    }
    assert!(!wins.contains_key("ND_4"), "{wins:?}");
    for i in 0..4 {
        let share = f64::from(wins[&format!("ND_{i}")]) / f64::from(n);
        assert!((share - 0.25).abs() < 0.06, "{wins:?}");
    }
}
