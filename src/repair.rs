//! Making outputs whole after a handler died without finalizing them (SIGKILL, crash, power):
//!
//! - A hybrid MP4 is fragmented while it records (so a kill loses at most the fragment being
//!   written); it is remuxed (no re-encode: `qtdemux ! mp4mux`) into a normal progressive MP4
//!   with its duration in the header, which then replaces it: by the handler after EOS, or here
//!   after a kill. If the remux fails the fragmented original stays (it decodes as it is).
//! - An HLS playlist lists only closed segments; the segment that was being written is
//!   decodable up to the kill, so it is appended, and the playlist is ended (`#EXT-X-ENDLIST`).
//!
//! Called by the Pipeline actor when its handler exits unfinalized, by the Supervisor for
//! egresses a previous run left, and by the handler itself after a pipeline error. Everything
//! here blocks: run it on a blocking thread.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::hls::{Playlist, Segment, relative_uri};
use crate::model::{SegmentsInfo, SegmentsOutput};
use crate::pipeline::output_segments::segment_name;
use crate::store::{Durability, write_atomic};

/// Whether the MP4 at `path` still has fragments (`moof` boxes at the top level): a hybrid
/// MP4 that was never finalized.
pub fn is_fragmented(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = 0u64;
    let mut head = [0u8; 16];
    while pos + 8 <= len {
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut head[..8])?;
        let mut size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let kind = &head[4..8];
        if kind == b"moof" {
            return Ok(true);
        }
        if size == 1 {
            f.read_exact(&mut head[8..16])?;
            size = u64::from_be_bytes(head[8..16].try_into().unwrap_or([0; 8]));
        } else if size == 0 {
            break;
        }
        if size < 8 {
            break;
        }
        pos += size;
    }
    Ok(false)
}

/// Remuxes a fragmented MP4 into a normal one in place; the original stays if anything fails.
/// `timeline`, when known, puts the tracks back at their true distance (see `timeline`).
pub fn remux_mp4(
    path: &Path,
    timeout: Duration,
    timeline: Option<crate::timeline::Timeline>,
) -> Result<(), String> {
    gst::init().map_err(|e| e.to_string())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.repair.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let result = remux_into(path, &tmp, timeout, timeline).and_then(|()| {
        let d = crate::media::discover(&tmp, Duration::from_secs(10))?;
        if d.duration_s.unwrap_or(0.0) <= 0.0 {
            return Err("the remuxed file has no duration".into());
        }
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn remux_into(
    src: &Path,
    dst: &Path,
    timeout: Duration,
    timeline: Option<crate::timeline::Timeline>,
) -> Result<(), String> {
    let (video_shift, audio_shift) = timeline.map(|t| t.shifts()).unwrap_or((0, 0));
    let make = |f: &str| {
        gst::ElementFactory::make(f)
            .build()
            .map_err(|_| format!("no GStreamer element {f}"))
    };
    let p = gst::Pipeline::new();
    let filesrc = make("filesrc")?;
    filesrc.set_property("location", src.to_string_lossy().as_ref());
    let demux = make("qtdemux")?;
    let mux = make("mp4mux")?;
    let sink = make("filesink")?;
    sink.set_property("location", dst.to_string_lossy().as_ref());
    p.add_many([&filesrc, &demux, &mux, &sink])
        .map_err(|e| e.to_string())?;
    filesrc.link(&demux).map_err(|e| e.to_string())?;
    mux.link(&sink).map_err(|e| e.to_string())?;
    // Each track of the demuxer through a queue into a request pad of the muxer.
    let weak = p.downgrade();
    let mux_w = mux.downgrade();
    demux.connect_pad_added(move |_, pad| {
        let (Some(p), Some(mux)) = (weak.upgrade(), mux_w.upgrade()) else {
            return;
        };
        // Unbounded: a track shifted by the timeline (audio that started seconds after the
        // video) makes the muxer take one track's data seconds ahead of the other's, and a
        // bounded queue would stall the demuxer for good (the remux then times out).
        let Ok(q) = gst::ElementFactory::make("queue")
            .property("max-size-time", 0u64)
            .property("max-size-buffers", 0u32)
            .property("max-size-bytes", 0u32)
            .build()
        else {
            return;
        };
        let video = pad.name().starts_with("video");
        // qtdemux may give a fragmented file's track new caps midway (a frame rate it
        // recomputes), which mp4mux refuses: the remux then stalls until its timeout.
        crate::pipeline::keep_first_caps(pad);
        let template = if video { "video_%u" } else { "audio_%u" };
        let shift = gst::ClockTime::from_nseconds(if video { video_shift } else { audio_shift });
        if !shift.is_zero() {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
                    crate::pipeline::delay(b.make_mut(), shift);
                }
                gst::PadProbeReturn::Ok
            });
        }
        if p.add(&q).is_err() {
            return;
        }
        let _ = q.sync_state_with_parent();
        let linked = pad.link(&q.static_pad("sink").expect("queue has a sink pad"));
        if linked.is_ok()
            && let Some(mp) = mux.request_pad_simple(template)
            && let Some(qs) = q.static_pad("src")
        {
            let _ = qs.link(&mp);
        }
    });
    let bus = p.bus().ok_or("no bus")?;
    p.set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start the remux: {e}"))?;
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(format!("remux took longer than {} s", timeout.as_secs()));
        }
        let wait = gst::ClockTime::from_mseconds(left.as_millis().min(500) as u64);
        let Some(msg) = bus.timed_pop(wait) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(e.error().to_string()),
            _ => {}
        }
    };
    let _ = p.set_state(gst::State::Null);
    outcome
}

/// Repairs the MP4 at `path` when it is left fragmented; says what happened, for the log.
pub fn mp4_if_needed(
    path: &Path,
    timeline: Option<crate::timeline::Timeline>,
) -> Option<Result<(), String>> {
    match is_fragmented(path) {
        Ok(true) => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            // Local remuxing runs at hundreds of MB/s; the margin is for a loaded disk.
            let timeout = Duration::from_secs(30 + size / 5_000_000);
            Some(remux_mp4(path, timeout, timeline))
        }
        Ok(false) | Err(_) => None,
    }
}

/// The playlist's state on disk: the segments it lists, whether it ended, and the listed
/// segments' total size.
pub fn read_playlist(s: &SegmentsOutput) -> (Playlist, u64) {
    let text = std::fs::read_to_string(&s.playlist_path).unwrap_or_default();
    let mut p = Playlist::parse(&text);
    if p.target_s == 0.0 {
        p.target_s = s.segment_duration_s;
    }
    let size = p.segments.len() as u32;
    let bytes = (0..size)
        .map(|n| {
            std::fs::metadata(s.dir.join(segment_name(s, n)))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    (p, bytes)
}

/// Ends a playlist a handler left open: appends the segment that was being written (when it
/// has media) and `#EXT-X-ENDLIST`, and rewrites the live playlist to match.
pub fn close_playlist(s: &SegmentsOutput) -> Result<(), String> {
    let (mut p, _) = read_playlist(s);
    let mut changed = !p.ended;
    let pdir = s
        .playlist_path
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    // Run once the handler is gone, so nothing is still being written: a segment beyond the
    // playlist with data (one a kill cut, or one finished after the handler ended its
    // playlist) is measured from its packets (a cut MPEG-TS says nothing of its duration) and
    // listed; an empty one (splitmuxsink names one fragment more at EOS than it writes) goes.
    loop {
        let next = s.dir.join(segment_name(s, p.segments.len() as u32));
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.is_file() && m.len() > 0 => match ts_span(&next, Duration::from_secs(30)) {
                Some(secs) => {
                    p.segments.push(Segment {
                        uri: relative_uri(&pdir, &next),
                        duration_s: secs,
                    });
                    changed = true;
                }
                None => break,
            },
            Ok(_) => {
                crate::outputs::remove_if_empty(&next);
                break;
            }
            Err(_) => break,
        }
    }
    if !changed {
        return Ok(());
    }
    p.ended = true;
    write_playlists(s, &p).map_err(|e| e.to_string())
}

/// (first pts, last end) in ns of the video and the audio of a file.
type Spans = [Option<(u64, u64)>; 2];

/// Seconds of video (else audio) an MPEG-TS file holds, from its packets' timestamps; a file
/// cut short by a kill counts up to its last whole packet.
pub fn ts_span(path: &Path, timeout: Duration) -> Option<f64> {
    use std::sync::{Arc, Mutex};
    gst::init().ok()?;
    let p = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .ok()?;
    let demux = gst::ElementFactory::make("tsdemux").build().ok()?;
    p.add_many([&src, &demux]).ok()?;
    src.link(&demux).ok()?;
    // (video, audio) spans: (first pts, last end).
    let spans: Arc<Mutex<Spans>> = Arc::default();
    let weak = p.downgrade();
    let sp = spans.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(p) = weak.upgrade() else { return };
        let Ok(sink) = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
        else {
            return;
        };
        if p.add(&sink).is_err() {
            return;
        }
        let _ = sink.sync_state_with_parent();
        if let Some(sp_pad) = sink.static_pad("sink") {
            let _ = pad.link(&sp_pad);
        }
        let k = usize::from(!pad.name().starts_with("video"));
        let sp = sp.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer()
                && let Some(pts) = b.pts()
            {
                let end = (pts + b.duration().unwrap_or(gst::ClockTime::ZERO)).nseconds();
                let mut s = sp.lock().unwrap_or_else(|e| e.into_inner());
                let cur = s[k].get_or_insert((pts.nseconds(), end));
                cur.0 = cur.0.min(pts.nseconds());
                cur.1 = cur.1.max(end);
            }
            gst::PadProbeReturn::Ok
        });
    });
    let bus = p.bus()?;
    p.set_state(gst::State::Playing).ok()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        if matches!(
            msg.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        ) {
            break;
        }
    }
    let _ = p.set_state(gst::State::Null);
    let s = *spans.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = s[0].or(s[1])?;
    let secs = b.saturating_sub(a) as f64 / 1e9;
    (secs > 0.0).then(|| (secs * 1000.0).round() / 1000.0)
}

/// Writes the EVENT playlist and the live one (when asked for), atomically.
pub fn write_playlists(s: &SegmentsOutput, p: &Playlist) -> std::io::Result<()> {
    write_atomic(
        &s.playlist_path,
        p.render_event().as_bytes(),
        Durability::Data,
    )?;
    if let Some((_, path, len)) = &s.live {
        write_atomic(
            path,
            p.render_live(*len as usize).as_bytes(),
            Durability::Data,
        )?;
    }
    Ok(())
}

/// What EgressInfo reports of the HLS output, read from disk.
pub fn segments_info(s: &SegmentsOutput) -> SegmentsInfo {
    let (p, bytes) = read_playlist(s);
    SegmentsInfo {
        playlist: s.playlist.clone(),
        location: s.playlist_path.display().to_string(),
        live_playlist: s.live.as_ref().map(|l| l.0.clone()),
        live_length: s.live.as_ref().map(|l| l.2),
        prefix: s.prefix.clone(),
        count: p.segments.len() as u32,
        duration_s: (p.duration_s() * 1000.0).round() / 1000.0,
        size_bytes: bytes,
        upload: None,
    }
}

/// The segments output an EgressInfo describes (for egresses a previous run left).
pub fn segments_of(info: &SegmentsInfo, output_root: &Path, target_s: f64) -> SegmentsOutput {
    let prefix = output_root.join(&info.prefix);
    SegmentsOutput {
        prefix: info.prefix.clone(),
        dir: prefix
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| output_root.to_path_buf()),
        stem: prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        playlist: info.playlist.clone(),
        playlist_path: PathBuf::from(&info.location),
        segment_duration_s: target_s,
        live: info.live_playlist.as_ref().map(|l| {
            (
                l.clone(),
                output_root.join(l),
                info.live_length.unwrap_or(6),
            )
        }),
    }
}

/// How many images `{stem}_00000.jpg`, ... exist in a row.
pub fn count_images(dir: &Path, stem: &str) -> u32 {
    let names = crate::model::numbered::NumberedName::new(stem, "jpg");
    let mut n = 0;
    while dir.join(names.name(n)).exists() {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes(list: &[(&[u8; 4], usize)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (kind, size) in list {
            v.extend_from_slice(&(*size as u32).to_be_bytes());
            v.extend_from_slice(*kind);
            v.extend(std::iter::repeat_n(0u8, size - 8));
        }
        v
    }

    #[test]
    fn a_cut_mpeg_ts_is_measured_up_to_its_last_whole_packet() {
        gst::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("s.ts");
        let line = format!(
            "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=160,height=120,framerate=15/1 \
             ! x264enc key-int-max=15 ! h264parse ! mpegtsmux ! filesink location={}",
            ts.display()
        );
        let p = gst::parse::launch(&line).unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let bus = p.bus().unwrap();
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos]);
        p.set_state(gst::State::Null).unwrap();
        let full = ts_span(&ts, Duration::from_secs(10)).expect("span");
        assert!((full - 4.0).abs() < 0.2, "{full}");
        // Cut in the middle of a packet, as a kill leaves it.
        let bytes = std::fs::read(&ts).unwrap();
        std::fs::write(&ts, &bytes[..bytes.len() / 2 + 77]).unwrap();
        let cut = ts_span(&ts, Duration::from_secs(10)).expect("span of the cut file");
        assert!(cut > 1.0 && cut < full, "{cut}");
    }

    #[test]
    fn fragments_are_found_at_the_top_level_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.mp4");
        std::fs::write(&p, boxes(&[(b"ftyp", 32), (b"mdat", 100), (b"moov", 50)])).unwrap();
        assert!(!is_fragmented(&p).unwrap());
        std::fs::write(
            &p,
            boxes(&[
                (b"ftyp", 32),
                (b"mdat", 100),
                (b"moov", 50),
                (b"mdat", 60),
                (b"moof", 40),
            ]),
        )
        .unwrap();
        assert!(is_fragmented(&p).unwrap());
        // A truncated last box (a kill mid-write) ends the scan without an error.
        let mut v = boxes(&[(b"ftyp", 32), (b"mdat", 100)]);
        v.extend_from_slice(&1000u32.to_be_bytes());
        v.extend_from_slice(b"mdat");
        std::fs::write(&p, v).unwrap();
        assert!(!is_fragmented(&p).unwrap());
    }
}
