//! HLS playlists, rendered and parsed here so the handler (which rewrites them as segments
//! close) and the service (which closes a playlist a killed handler left open) agree.
//!
//! The main playlist is an EVENT playlist: every segment stays listed, `#EXT-X-ENDLIST` ends it.
//! The live playlist is a sliding window of the last N segments with its media sequence.
//! Both are written atomically (a temporary file renamed over the old one), so a player never
//! reads half a playlist, and after a crash the playlist lists only whole, closed segments.

use std::path::Path;

/// One closed segment: its URI relative to the playlist, and its duration.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub uri: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Playlist {
    /// The target duration asked for; the header says the longest segment, rounded up.
    pub target_s: f64,
    pub segments: Vec<Segment>,
    pub ended: bool,
}

impl Playlist {
    pub fn new(target_s: f64) -> Playlist {
        Playlist {
            target_s,
            ..Playlist::default()
        }
    }

    fn target_duration(&self) -> u64 {
        let longest = self
            .segments
            .iter()
            .map(|s| s.duration_s)
            .fold(self.target_s, f64::max);
        // RFC 8216: EXTINF rounded to the nearest integer must not exceed it.
        longest.round().max(1.0) as u64
    }

    pub fn duration_s(&self) -> f64 {
        self.segments.iter().map(|s| s.duration_s).sum()
    }

    /// The EVENT playlist.
    pub fn render_event(&self) -> String {
        self.render(0, &self.segments, true)
    }

    /// The sliding window of the last `length` segments.
    pub fn render_live(&self, length: usize) -> String {
        let first = self.segments.len().saturating_sub(length);
        self.render(first, &self.segments[first..], false)
    }

    fn render(&self, sequence: usize, segments: &[Segment], event: bool) -> String {
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
        out.push_str(&format!(
            "#EXT-X-TARGETDURATION:{}\n",
            self.target_duration()
        ));
        out.push_str(&format!("#EXT-X-MEDIA-SEQUENCE:{sequence}\n"));
        if event {
            out.push_str("#EXT-X-PLAYLIST-TYPE:EVENT\n");
        }
        for s in segments {
            out.push_str(&format!("#EXTINF:{:.3},\n{}\n", s.duration_s, s.uri));
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }

    /// Reads back a playlist this module rendered.
    pub fn parse(text: &str) -> Playlist {
        let mut p = Playlist::default();
        let mut pending: Option<f64> = None;
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                p.target_s = v.parse().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("#EXTINF:") {
                pending = v.split(',').next().and_then(|d| d.parse().ok());
            } else if line == "#EXT-X-ENDLIST" {
                p.ended = true;
            } else if !line.is_empty()
                && !line.starts_with('#')
                && let Some(d) = pending.take()
            {
                p.segments.push(Segment {
                    uri: line.to_string(),
                    duration_s: d,
                });
            }
        }
        p
    }
}

/// The path of `target` relative to directory `from` (both absolute, lexical): how a playlist
/// names a segment in another directory.
pub fn relative_uri(from: &Path, target: &Path) -> String {
    let a: Vec<_> = from.components().collect();
    let b: Vec<_> = target.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_string(), a.len() - common).collect();
    parts.extend(
        b[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(uri: &str, d: f64) -> Segment {
        Segment {
            uri: uri.into(),
            duration_s: d,
        }
    }

    #[test]
    fn event_playlist_lists_every_segment_and_ends() {
        let mut p = Playlist::new(6.0);
        p.segments = vec![seg("a_00000.ts", 6.0), seg("a_00001.ts", 6.4)];
        let t = p.render_event();
        assert!(t.starts_with("#EXTM3U\n"), "{t}");
        assert!(t.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{t}");
        assert!(t.contains("#EXT-X-TARGETDURATION:6\n"), "{t}");
        assert!(t.contains("#EXTINF:6.400,\na_00001.ts\n"), "{t}");
        assert!(!t.contains("ENDLIST"));
        p.ended = true;
        let t = p.render_event();
        assert!(t.ends_with("#EXT-X-ENDLIST\n"), "{t}");
        assert_eq!(Playlist::parse(&t).segments, p.segments);
        assert!(Playlist::parse(&t).ended);
    }

    #[test]
    fn live_playlist_slides() {
        let mut p = Playlist::new(2.0);
        p.segments = (0..5).map(|i| seg(&format!("s{i}.ts"), 2.0)).collect();
        let t = p.render_live(3);
        assert!(t.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{t}");
        assert!(!t.contains("s1.ts") && t.contains("s2.ts") && t.contains("s4.ts"));
        assert!(!t.contains("PLAYLIST-TYPE"));
    }

    #[test]
    fn uris_are_relative_to_the_playlist() {
        let r = |a: &str, b: &str| relative_uri(Path::new(a), Path::new(b));
        assert_eq!(r("/rec/hls", "/rec/hls/a_00000.ts"), "a_00000.ts");
        assert_eq!(r("/rec", "/rec/hls/a_00000.ts"), "hls/a_00000.ts");
        assert_eq!(r("/rec/p", "/rec/hls/a.ts"), "../hls/a.ts");
    }
}
