//! Learned costs: what jobs of each *class* really used on this hardware, and the price admission
//! charges a new job of that class. Pure: the `CostLearner` actor feeds it samples and ends, and
//! persists and shares the table it keeps.
//!
//! # Classes
//! A class is what drives a job's CPU and is known when the job is admitted: its type, its output
//! video size and frame rate, and how many encodes it runs (`track 1280x720@30`,
//! `participant 1920x1080@30`, `track audio` for an audio-only track). Whether a track is
//! remuxed or transcoded is decided by the handler once it sees the stream; a track that *may*
//! remux (a network source, outputs that all take H.264) is its own class (` remux`), so the
//! copies that cost next to nothing do not lower the price of transcoded tracks.
//!
//! # Learning
//! - Each sample of a job taken at or after `start + pending_hold_ms` counts (the start-up spike
//!   and the zero of a process's first sample are not its steady cost).
//! - At the job's end, its counted samples are summarised as p50 / p95 / max. A job counts only
//!   when its counted samples span at least `MIN_JOB_MS` (3 s).
//! - A class's estimate folds each job in with an exponential weight (`EWMA_WEIGHT` for the new
//!   job): p50 and p95 are weighted means, max is the largest seen. The first job sets them.
//! - A class is learned after `learn_min_jobs` jobs, or once `calibrate` measured it.
//!
//! # Pricing
//! `learned` mode: max(p95 x margin, floor) for a learned class, else the configured cost of the
//! type. `static` mode: the configured cost. A request's `estimated_cpu` wins over both (the
//! caller checks it first).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, CostMode};
use crate::model::{EgressSpec, EgressType};

/// Shortest span of counted samples for a job to teach its class anything.
pub const MIN_JOB_MS: u64 = 3_000;
/// Weight of the newest job in a class's p50 and p95.
pub const EWMA_WEIGHT: f64 = 0.3;
/// Samples kept per running job; past this, every other one is dropped (the percentiles of a
/// long job stay representative at a bounded memory cost).
pub const MAX_JOB_SAMPLES: usize = 8_192;
/// Most classes a table keeps: a new class beyond this evicts the one updated longest ago (the
/// video settings are the client's, so the classes in use are bounded only by this).
pub const MAX_CLASSES: usize = 256;
/// The video every type defaults to (the request validation's defaults): the class a type-only
/// question (`/v1/affinity`, capacity, calibrate) is priced at.
pub const DEFAULT_VIDEO: (u32, u32, u32) = (1280, 720, 30);

/// What a job is priced by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CostClass {
    pub egress_type: EgressType,
    /// Output video (width, height, fps); None for audio only.
    pub video: Option<(u32, u32, u32)>,
    /// Encoders the job runs: one, plus one per output that needs a codec of its own.
    pub encodes: u32,
    /// A track of a network source that is copied as it is when it is already H.264 (remux):
    /// whether it is cannot be known before the handler sees the stream, so such jobs are a
    /// class of their own rather than mixed into the transcoded ones.
    pub remux: bool,
}

impl CostClass {
    /// The class of a validated request.
    pub fn of(spec: &EgressSpec) -> CostClass {
        let audio_only =
            !spec.sources.is_empty() && spec.sources.iter().all(|s| s.has_video() == Some(false));
        CostClass {
            egress_type: spec.egress_type,
            video: (!audio_only).then_some((spec.video.width, spec.video.height, spec.video.fps)),
            encodes: 1 + crate::pipeline::plan::extra_encodes(&spec.outputs) as u32,
            remux: crate::pipeline::plan::copy_caps(spec).is_some()
                && spec
                    .sources
                    .iter()
                    .any(|s| matches!(s, crate::model::Source::Uri { .. })),
        }
    }

    /// A type at its default video.
    pub fn default_of(t: EgressType) -> CostClass {
        CostClass {
            egress_type: t,
            video: Some(DEFAULT_VIDEO),
            encodes: 1,
            remux: false,
        }
    }

    /// Its name in reports, files and Redis: `participant 1280x720@30`, `track audio`, with
    /// ` x2` appended for two encodes and ` remux` for a track that may copy its source.
    pub fn key(&self) -> String {
        let mut k = match self.video {
            Some((w, h, f)) => format!("{} {w}x{h}@{f}", self.egress_type),
            None => format!("{} audio", self.egress_type),
        };
        if self.encodes > 1 {
            k.push_str(&format!(" x{}", self.encodes));
        }
        if self.remux {
            k.push_str(" remux");
        }
        k
    }

    /// Reads a key back (None when it is not one).
    pub fn parse(key: &str) -> Option<CostClass> {
        let mut parts = key.split(' ');
        let egress_type = EgressType::parse(parts.next()?)?;
        let video = match parts.next()? {
            "audio" => None,
            v => {
                let (wh, f) = v.split_once('@')?;
                let (w, h) = wh.split_once('x')?;
                Some((w.parse().ok()?, h.parse().ok()?, f.parse().ok()?))
            }
        };
        let mut next = parts.next();
        let mut encodes = 1;
        if let Some(e) = next.and_then(|e| e.strip_prefix('x')) {
            encodes = e.parse().ok().filter(|n| *n >= 2)?;
            next = parts.next();
        }
        let remux = next == Some("remux");
        if (next.is_some() && !remux) || parts.next().is_some() {
            return None;
        }
        Some(CostClass {
            egress_type,
            video,
            encodes,
            remux,
        })
    }
}

/// One job's measured CPU after its start hold, in cores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSummary {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// The time the counted samples cover: from the first to the last, plus the one interval
    /// the last sample stands for (four samples a second apart cover 4 s, not 3).
    pub span_ms: u64,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl JobSummary {
    /// Summarises `(at_ms, cores)` samples taken every `interval_ms`; None without any.
    pub fn of(samples: &[(u64, f64)], interval_ms: u64) -> Option<JobSummary> {
        let first = samples.iter().map(|s| s.0).min()?;
        let last = samples.iter().map(|s| s.0).max()?;
        let mut v: Vec<f64> = samples
            .iter()
            .map(|s| if s.1.is_finite() { s.1.max(0.0) } else { 0.0 })
            .collect();
        v.sort_by(f64::total_cmp);
        Some(JobSummary {
            p50: percentile(&v, 0.5),
            p95: percentile(&v, 0.95),
            max: v[v.len() - 1],
            span_ms: last - first + interval_ms,
        })
    }

    /// Whether it ran long enough to count.
    pub fn counts(&self) -> bool {
        self.span_ms >= MIN_JOB_MS
    }
}

/// A class's learned figures (also its JSON in `state_dir/costs.json` and in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Estimate {
    /// Exponentially weighted p50 of its jobs, in cores.
    pub p50: f64,
    /// Exponentially weighted p95 of its jobs, in cores: what the price is made of.
    pub p95: f64,
    /// Largest sample seen, in cores.
    pub max: f64,
    /// Jobs folded in.
    pub jobs: u64,
    /// Measured by `egress-engine calibrate`: learned whatever `jobs` is.
    #[serde(default)]
    pub calibrated: bool,
    /// When the last job was folded in (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

impl Estimate {
    /// The estimate after one more job.
    pub fn fold(old: Option<&Estimate>, job: &JobSummary, now_ms: u64) -> Estimate {
        match old {
            None => Estimate {
                p50: job.p50,
                p95: job.p95,
                max: job.max,
                jobs: 1,
                calibrated: false,
                updated_at_ms: now_ms,
            },
            Some(o) => Estimate {
                p50: o.p50 + EWMA_WEIGHT * (job.p50 - o.p50),
                p95: o.p95 + EWMA_WEIGHT * (job.p95 - o.p95),
                max: o.max.max(job.max),
                jobs: o.jobs + 1,
                calibrated: o.calibrated,
                updated_at_ms: now_ms,
            },
        }
    }

    pub fn learned(&self, min_jobs: u32) -> bool {
        self.calibrated || self.jobs >= u64::from(min_jobs)
    }

    /// Whether it holds sane numbers (a file or Redis entry that does not is ignored).
    pub fn sane(&self) -> bool {
        [self.p50, self.p95, self.max]
            .iter()
            .all(|v| v.is_finite() && (0.0..=4096.0).contains(v))
    }
}

/// The learned estimate of every class seen, by class key.
pub type CostTable = BTreeMap<String, Estimate>;

/// The table without what a file or Redis may hold that is not sane or not a class key.
pub fn keep_known(mut table: CostTable) -> CostTable {
    table.retain(|k, e| e.sane() && CostClass::parse(k).is_some());
    table
}

/// How prices are made from the table (the `cpu.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct PricePolicy {
    pub mode: CostMode,
    pub margin: f64,
    pub floor: f64,
    pub min_jobs: u32,
}

impl PricePolicy {
    pub fn from_config(cfg: &Config) -> PricePolicy {
        PricePolicy {
            mode: cfg.cost_mode(),
            margin: cfg.cpu.cost_margin,
            floor: cfg.cpu.learned_cost_floor,
            min_jobs: cfg.cpu.learn_min_jobs,
        }
    }

    /// The learned price of an estimate, when it is learned (in either mode: reports show it).
    pub fn learned_price(&self, e: Option<&Estimate>) -> Option<f64> {
        e.filter(|e| e.learned(self.min_jobs))
            .map(|e| (e.p95 * self.margin).max(self.floor))
    }

    /// What admission charges a job whose class has estimate `e` and whose type is configured
    /// at `configured` cores.
    pub fn price(&self, e: Option<&Estimate>, configured: f64) -> f64 {
        match self.mode {
            CostMode::Static => configured,
            CostMode::Learned => self.learned_price(e).unwrap_or(configured),
        }
    }
}

/// Folds a job into the table; returns the class's new estimate, or None when the job was too
/// short to count.
pub fn learn(
    table: &mut CostTable,
    class: &CostClass,
    job: &JobSummary,
    now_ms: u64,
) -> Option<Estimate> {
    if !job.counts() {
        return None;
    }
    let key = class.key();
    let e = Estimate::fold(table.get(&key), job, now_ms);
    table.insert(key.clone(), e.clone());
    evict(table, &key);
    Some(e)
}

/// Drops the classes updated longest ago (never `keep`) until at most `MAX_CLASSES` remain.
fn evict(table: &mut CostTable, keep: &str) {
    while table.len() > MAX_CLASSES {
        let oldest = table
            .iter()
            .filter(|(k, _)| k.as_str() != keep)
            .min_by_key(|(k, e)| (e.updated_at_ms, (*k).clone()))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => table.remove(&k),
            None => return,
        };
    }
}

/// Takes entries of `other` (the fleet's table) over this one's where they know more: a class
/// this table lacks, or one with more jobs behind it (a calibrated entry stays calibrated).
/// Returns how many entries changed.
pub fn merge(table: &mut CostTable, other: &CostTable) -> usize {
    let mut changed = 0;
    for (k, e) in other {
        if !e.sane() || CostClass::parse(k).is_none() {
            continue;
        }
        let take = match table.get(k) {
            None => true,
            Some(mine) => {
                e.jobs > mine.jobs || (e.jobs == mine.jobs && e.updated_at_ms > mine.updated_at_ms)
            }
        };
        if take {
            let calibrated = e.calibrated || table.get(k).is_some_and(|m| m.calibrated);
            let mut e = e.clone();
            e.calibrated = calibrated;
            if table.get(k) != Some(&e) {
                table.insert(k.clone(), e);
                changed += 1;
            }
        }
    }
    evict(table, "");
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(p50: f64, p95: f64, max: f64, span_ms: u64) -> JobSummary {
        JobSummary {
            p50,
            p95,
            max,
            span_ms,
        }
    }

    fn policy(mode: CostMode) -> PricePolicy {
        PricePolicy {
            mode,
            margin: 1.2,
            floor: 0.1,
            min_jobs: 3,
        }
    }

    #[test]
    fn class_keys_read_back() {
        for k in [
            "participant 1280x720@30",
            "track audio",
            "room_composite 1920x1080@60 x2",
            "track 1280x720@30 remux",
            "track 1280x720@30 x2 remux",
        ] {
            assert_eq!(CostClass::parse(k).unwrap().key(), k);
        }
        for bad in [
            "",
            "nope 1x1@1",
            "track",
            "track 1x1",
            "track 1x1@1 x0",
            "track 1x1@1 x2 y",
            "track audio x",
            "track 1x1@1 x1",
            "track 1x1@1 remux x2",
            "track 1x1@1 remux remux",
        ] {
            assert_eq!(CostClass::parse(bad), None, "{bad}");
        }
        assert_eq!(
            CostClass::default_of(EgressType::Track).key(),
            "track 1280x720@30"
        );
    }

    /// The class of a request, validated as the node does.
    fn class_of(req: serde_json::Value) -> String {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::model::ValidationContext {
            output_dir: dir.path(),
            state_dir: dir.path(),
            allowed_schemes: &["test".to_string(), "rtmp".to_string()],
            allowed_web_hosts: &[],
            allowed_endpoints: &[],
        };
        let req: crate::model::EgressRequest = serde_json::from_value(req).unwrap();
        CostClass::of(&req.validate("EG_x", &ctx).unwrap()).key()
    }

    #[test]
    fn classes_of_requests() {
        use serde_json::json;
        let file = |f: &str| json!({"file": {"filename": f}});
        // Defaults: 1280x720@30; an audio-only test track has no video in its class.
        assert_eq!(
            class_of(
                json!({"type": "participant", "sources": [{"uri": "test://av"}], "output": file("a.mp4")})
            ),
            "participant 1280x720@30"
        );
        assert_eq!(
            class_of(
                json!({"type": "track", "sources": [{"uri": "test://audio"}], "output": file("a.ogg")})
            ),
            "track audio"
        );
        // A network track whose outputs all take H.264 may be copied: its own class. A test
        // source is raw: always encoded.
        let net = json!({"type": "track", "sources": [{"uri": "rtmp://127.0.0.1/live/x"}],
                         "output": file("a.mp4"), "video": {"width": 640, "height": 360, "fps": 15}});
        assert_eq!(class_of(net), "track 640x360@15 remux");
        assert_eq!(
            class_of(
                json!({"type": "track", "sources": [{"uri": "test://video"}], "output": file("a.mp4")})
            ),
            "track 1280x720@30"
        );
        // webm (VP8) beside HLS (H.264): two encodes.
        assert_eq!(
            class_of(
                json!({"type": "participant", "sources": [{"uri": "test://av"}],
                            "outputs": [file("a.webm"), {"segments": {}}]})
            ),
            "participant 1280x720@30 x2"
        );
    }

    #[test]
    fn summary_takes_nearest_rank_percentiles() {
        // 1..=20 cores over 19 s: p50 is the 10th value, p95 the 19th.
        let samples: Vec<(u64, f64)> = (1..=20).map(|i| (i * 1000, i as f64)).collect();
        let s = JobSummary::of(&samples, 1000).unwrap();
        assert_eq!((s.p50, s.p95, s.max, s.span_ms), (10.0, 19.0, 20.0, 20_000));
        assert!(s.counts());
        let one = JobSummary::of(&[(5, 0.5)], 1000).unwrap();
        assert_eq!(
            (one.p50, one.p95, one.max, one.span_ms),
            (0.5, 0.5, 0.5, 1000)
        );
        assert!(!one.counts());
        assert_eq!(JobSummary::of(&[], 1000), None);
        // Four samples a second apart, a few ms early: 4 s measured, it counts (it did not, as
        // 2 998 ms between first and last, for about one 9-s job in three here).
        let four = [(0, 1.0), (999, 1.0), (1998, 1.0), (2998, 1.0)];
        assert!(JobSummary::of(&four, 1000).unwrap().counts());
        // Garbage counts as nothing rather than poisoning the figures.
        let s = JobSummary::of(&[(0, f64::NAN), (3000, -1.0), (4000, 2.0)], 1000).unwrap();
        assert_eq!((s.p50, s.max), (0.0, 2.0));
    }

    #[test]
    fn short_jobs_teach_nothing_and_three_jobs_learn_a_class() {
        let c = CostClass::default_of(EgressType::Participant);
        let mut t = CostTable::new();
        let p = policy(CostMode::Learned);
        assert_eq!(learn(&mut t, &c, &job(1.0, 2.0, 3.0, 2_999), 1), None);
        assert!(t.is_empty());
        let e1 = learn(&mut t, &c, &job(1.0, 2.0, 3.0, 3_000), 1).unwrap();
        assert_eq!((e1.p50, e1.p95, e1.max, e1.jobs), (1.0, 2.0, 3.0, 1));
        learn(&mut t, &c, &job(1.0, 2.0, 2.5, 9_000), 2).unwrap();
        // Not learned yet: the configured cost.
        assert_eq!(p.price(t.get(&c.key()), 0.5), 0.5);
        assert_eq!(p.learned_price(t.get(&c.key())), None);
        let e3 = learn(&mut t, &c, &job(2.0, 4.0, 5.0, 9_000), 3).unwrap();
        // EWMA: 2 + 0.3 * (4 - 2).
        assert!((e3.p95 - 2.6).abs() < 1e-12, "{e3:?}");
        assert!((e3.p50 - 1.3).abs() < 1e-12, "{e3:?}");
        assert_eq!((e3.max, e3.jobs, e3.updated_at_ms), (5.0, 3, 3));
        let want = 2.6 * 1.2;
        assert!((p.price(t.get(&c.key()), 0.5) - want).abs() < 1e-12);
        // Static mode ignores it; reports still show it.
        let s = policy(CostMode::Static);
        assert_eq!(s.price(t.get(&c.key()), 0.5), 0.5);
        assert!((s.learned_price(t.get(&c.key())).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn the_floor_holds_and_calibrated_classes_are_learned_at_once() {
        let p = policy(CostMode::Learned);
        let tiny = Estimate {
            p50: 0.01,
            p95: 0.02,
            max: 0.05,
            jobs: 1,
            calibrated: true,
            updated_at_ms: 0,
        };
        assert_eq!(p.price(Some(&tiny), 2.0), 0.1);
        assert_eq!(p.price(None, 2.0), 2.0);
        let not = Estimate {
            calibrated: false,
            ..tiny
        };
        assert_eq!(p.price(Some(&not), 2.0), 2.0);
    }

    #[test]
    fn ewma_converges_to_a_new_level() {
        let c = CostClass::default_of(EgressType::Track);
        let mut t = CostTable::new();
        learn(&mut t, &c, &job(1.0, 1.0, 1.0, 5_000), 0);
        for i in 0..30 {
            learn(&mut t, &c, &job(3.0, 3.0, 3.0, 5_000), i);
        }
        let e = &t[&c.key()];
        assert!((e.p95 - 3.0).abs() < 0.01, "{e:?}");
        assert_eq!(e.jobs, 31);
    }

    #[test]
    fn the_table_keeps_the_classes_updated_last() {
        let mut t = CostTable::new();
        for i in 0..(MAX_CLASSES as u32 + 10) {
            let c = CostClass {
                egress_type: EgressType::Track,
                video: Some((16 + 2 * i, 16, 30)),
                encodes: 1,
                remux: false,
            };
            learn(&mut t, &c, &job(1.0, 1.0, 1.0, 5_000), u64::from(i));
        }
        assert_eq!(t.len(), MAX_CLASSES);
        assert!(!t.contains_key("track 16x16@30"), "the oldest went first");
        assert!(t.contains_key(&format!("track {}x16@30", 16 + 2 * (MAX_CLASSES + 9))));
        // A class learned again comes back, even when its job is dated before every other
        // class's: the oldest other one goes.
        let c = CostClass::parse("track 16x16@30").unwrap();
        learn(&mut t, &c, &job(1.0, 1.0, 1.0, 5_000), 0);
        assert!(t.contains_key("track 16x16@30"));
        assert!(!t.contains_key("track 36x16@30"));
        assert_eq!(t.len(), MAX_CLASSES);
    }

    #[test]
    fn merge_takes_what_knows_more_and_skips_garbage() {
        let e = |jobs, p95, at| Estimate {
            p50: p95 / 2.0,
            p95,
            max: p95,
            jobs,
            calibrated: false,
            updated_at_ms: at,
        };
        let mut mine = CostTable::new();
        mine.insert("track audio".into(), e(5, 0.1, 10));
        mine.insert("participant 1280x720@30".into(), e(1, 1.0, 10));
        let mut theirs = CostTable::new();
        theirs.insert("track audio".into(), e(2, 0.9, 20));
        theirs.insert("participant 1280x720@30".into(), e(4, 1.5, 5));
        theirs.insert("web 1280x720@30".into(), e(3, 4.0, 5));
        theirs.insert("garbage".into(), e(9, 1.0, 5));
        theirs.insert("track 1x1@1".into(), e(9, f64::NAN, 5));
        assert_eq!(merge(&mut mine, &theirs), 2);
        assert_eq!(mine["track audio"].p95, 0.1);
        assert_eq!(mine["participant 1280x720@30"].p95, 1.5);
        assert_eq!(mine["web 1280x720@30"].jobs, 3);
        assert_eq!(mine.len(), 3);
        assert_eq!(
            merge(&mut mine, &theirs),
            0,
            "merging twice changes nothing"
        );
    }
}
