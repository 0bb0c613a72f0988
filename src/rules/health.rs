//! Health of what is being recorded: a picture that stays black or frozen, sound that stays
//! silent, for longer than `pipeline.health_window_s`. The handler measures samples (the mean
//! luma of a frame and its difference from the last one that differed; the RMS level of the
//! raw audio) and these rules say when a warning is raised and when it clears.

use serde::{Deserialize, Serialize};

/// Mean luma (0-255) below this is black (video-range black is 16; a dark room is above 40).
pub const BLACK_LUMA: f64 = 28.0;
/// Two pictures whose most different block (a sixteenth of the width square) differs by less
/// than this (mean luma, each picture's own mean taken off) are the same picture; a moving one
/// differs by tens.
pub const FROZEN_DIFF: f64 = 0.5;
/// RMS level (dBFS) below this is silence.
pub const SILENT_DB: f64 = -60.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Black,
    Frozen,
    Silent,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Black => "black",
            Condition::Frozen => "frozen",
            Condition::Silent => "silent",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Condition::Black => "video black",
            Condition::Frozen => "video frozen",
            Condition::Silent => "audio silent",
        }
    }

    /// The warning an egress carries while the condition holds.
    pub fn warning(self, window_s: f64) -> String {
        format!("{} for more than {window_s} s", self.label())
    }

    /// Whether a warning text is this condition's (`warning`, whatever the window).
    pub fn is_warning(self, text: &str) -> bool {
        text.starts_with(&format!("{} for more than ", self.label()))
    }
}

/// One condition followed over samples: raised once it has held for `window_s`, cleared at the
/// first sample without it.
#[derive(Debug, Clone)]
pub struct Watch {
    window_s: f64,
    since: Option<f64>,
    raised: bool,
}

impl Watch {
    pub fn new(window_s: f64) -> Watch {
        Watch {
            window_s,
            since: None,
            raised: false,
        }
    }

    /// A sample at `t` (s): `holds_since` is when the condition began (usually `t`; for a
    /// frozen picture, when it last changed), or None when it does not hold. Returns
    /// Some(true) when the warning is raised now, Some(false) when it clears now.
    pub fn observe(&mut self, t: f64, holds_since: Option<f64>) -> Option<bool> {
        match holds_since {
            None => {
                self.since = None;
                std::mem::take(&mut self.raised).then_some(false)
            }
            Some(s) => {
                let since = *self.since.get_or_insert(s);
                (!self.raised && t - since >= self.window_s).then(|| {
                    self.raised = true;
                    true
                })
            }
        }
    }
}

pub fn is_black(mean_luma: f64) -> bool {
    mean_luma < BLACK_LUMA
}

pub fn is_frozen(mean_abs_diff: f64) -> bool {
    mean_abs_diff < FROZEN_DIFF
}

pub fn is_silent(rms_db: f64) -> bool {
    rms_db < SILENT_DB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_raised_after_the_window_and_cleared_at_once() {
        let mut w = Watch::new(10.0);
        // (t, holds since, expected change)
        let steps: &[(f64, Option<f64>, Option<bool>)] = &[
            (0.0, None, None),
            (2.0, Some(2.0), None),
            (11.9, Some(11.9), None),
            (12.0, Some(12.0), Some(true)),
            (14.0, Some(14.0), None),
            (16.0, None, Some(false)),
            (18.0, None, None),
            (20.0, Some(20.0), None),
            (22.0, None, None),
        ];
        for &(t, since, want) in steps {
            assert_eq!(w.observe(t, since), want, "at {t}");
        }
    }

    #[test]
    fn a_frozen_picture_counts_from_the_first_identical_sample() {
        let mut w = Watch::new(10.0);
        // Keyframes 8 s apart: the picture was the same at 0 and 8, and at 16.
        assert_eq!(w.observe(8.0, Some(0.0)), None);
        assert_eq!(w.observe(16.0, Some(8.0)), Some(true));
    }

    #[test]
    fn thresholds_and_texts() {
        assert!(is_black(16.0) && !is_black(60.0));
        assert!(is_frozen(0.0) && !is_frozen(3.0) && !is_frozen(48.0));
        assert!(is_silent(-90.0) && !is_silent(-20.0));
        let w = Condition::Silent.warning(10.0);
        assert_eq!(w, "audio silent for more than 10 s");
        assert!(Condition::Silent.is_warning(&w));
        assert!(!Condition::Black.is_warning(&w));
        assert!(!Condition::Black.is_warning("video missing from 3.2 s to the end"));
    }
}
