//! Whether a recording holds what its source announced: the pure rule behind `failed` "no video
//! from source" and a `complete` egress's `warnings`.
//!
//! The handler says which streams its outputs record (what the source announced and the egress
//! type takes); the file is read back at the end for where each stream starts and ends. A
//! stream with nothing in the file fails the egress; one that starts late or ends early by more
//! than `SLACK_S` is a warning that says where it is missing.

use serde::{Deserialize, Serialize};

/// Where each stream of a file starts and ends, in seconds (running time at the muxer, as the
/// handler measured it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamSpans {
    /// (first pts, last pts + duration) of the video.
    pub video: Option<(f64, f64)>,
    /// The same for the audio.
    pub audio: Option<(f64, f64)>,
}

impl StreamSpans {
    pub fn video_s(&self) -> Option<f64> {
        self.video.map(|(a, b)| round_ms(b - a))
    }
    pub fn audio_s(&self) -> Option<f64> {
        self.audio.map(|(a, b)| round_ms(b - a))
    }
}

fn round_ms(s: f64) -> f64 {
    (s.max(0.0) * 1000.0).round() / 1000.0
}

/// How far a stream may start after, or end before, the recording without a warning: the
/// record's times are the service's (the stop's handling, a sender's backlog), not the file's.
pub const SLACK_S: f64 = 2.0;

/// Recordings shorter than this are not judged: a stop right after the start may leave a
/// file whose first video frame is still in the encoder.
pub const MIN_JUDGED_S: f64 = 2.0;

/// What the outputs were built to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expected {
    pub video: bool,
    pub audio: bool,
}

/// The verdict on one recording file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The egress fails with this error (an announced stream is not in the file at all).
    pub failure: Option<String>,
    /// What the file lacks, for a `complete` egress.
    pub warnings: Vec<String>,
}

/// Judges a file whose streams span `spans`, recorded for `recorded_s` seconds (from the
/// first media to the end).
pub fn judge(expected: Expected, spans: &StreamSpans, recorded_s: f64) -> Verdict {
    let mut v = Verdict::default();
    if recorded_s < MIN_JUDGED_S {
        return v;
    }
    let kinds = [
        ("video", expected.video, spans.video),
        ("audio", expected.audio, spans.audio),
    ];
    let missing: Vec<&str> = kinds
        .iter()
        .filter(|(_, want, span)| *want && span.is_none())
        .map(|(k, _, _)| *k)
        .collect();
    if !missing.is_empty() {
        v.failure = Some(format!("no {} from source", missing.join(" and no ")));
        return v;
    }
    let present = kinds.iter().filter_map(|(_, _, s)| *s);
    let start = present.clone().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let end = present
        .map(|s| s.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(start + recorded_s);
    for (kind, want, span) in kinds {
        let (Some((a, b)), true) = (span, want) else {
            continue;
        };
        if a - start > SLACK_S {
            v.warnings
                .push(format!("{kind} missing for the first {:.1} s", a - start));
        }
        if end - b > SLACK_S {
            v.warnings
                .push(format!("{kind} missing from {:.1} s to the end", b - start));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const AV: Expected = Expected {
        video: true,
        audio: true,
    };

    fn spans(video: Option<(f64, f64)>, audio: Option<(f64, f64)>) -> StreamSpans {
        StreamSpans { video, audio }
    }

    #[test]
    fn whole_streams_give_no_warning() {
        let s = spans(Some((0.04, 10.0)), Some((0.0, 10.02)));
        assert_eq!(judge(AV, &s, 10.0), Verdict::default());
        // A video-only source recorded video only.
        let v = Expected {
            video: true,
            audio: false,
        };
        assert_eq!(
            judge(v, &spans(Some((0.0, 9.5)), None), 9.6),
            Verdict::default()
        );
    }

    #[test]
    fn a_stop_right_after_the_start_is_not_judged() {
        assert_eq!(
            judge(AV, &spans(None, Some((0.0, 0.3))), 0.4),
            Verdict::default()
        );
    }

    #[test]
    fn an_announced_stream_with_nothing_recorded_fails() {
        let s = spans(None, Some((0.0, 9.0)));
        assert_eq!(
            judge(AV, &s, 9.0).failure.as_deref(),
            Some("no video from source")
        );
        assert_eq!(
            judge(AV, &spans(None, None), 9.0).failure.as_deref(),
            Some("no video and no audio from source")
        );
    }

    #[test]
    fn a_stream_that_stops_early_or_starts_late_is_a_warning() {
        // Audio only until 3.2 s of a 9-s recording (the RTMP case of issue 21).
        let s = spans(Some((0.0, 9.0)), Some((0.0, 3.2)));
        let v = judge(AV, &s, 9.0);
        assert_eq!(v.failure, None);
        assert_eq!(v.warnings, vec!["audio missing from 3.2 s to the end"]);
        let s = spans(Some((4.0, 9.0)), Some((0.0, 9.0)));
        assert_eq!(
            judge(AV, &s, 9.0).warnings,
            vec!["video missing for the first 4.0 s"]
        );
        // Both streams end early against the time recorded.
        let s = spans(Some((0.0, 2.0)), Some((0.0, 2.0)));
        assert!(
            judge(AV, &spans(Some((0.0, 7.5)), Some((0.0, 7.4))), 9.0)
                .warnings
                .is_empty()
        );
        assert_eq!(judge(AV, &s, 9.0).warnings.len(), 2);
    }
}
