//! Live restreams. The recording graph only taps the shared encode into two appsinks; each
//! stream URL runs in a pipeline of its own fed from those taps, so a URL that fails (server
//! gone, refused, slow) can never stall or end the recording or the other outputs:
//!
//! ```text
//!   recording:  video_h264_tee ─► stream_video_queue (leaky) ─► stream_video_tap (appsink) ─┐
//!               audio_aac_tee  ─► stream_audio_queue (leaky) ─► stream_audio_tap (appsink) ─┤ fan-out
//!   per URL:    appsrc v ─► queue ─► h264parse ─┐                                           │
//!               appsrc a ─► queue ─► aacparse  ─┴► flvmux ─► rtmp2sink    (rtmp, rtmps)  ◄──┘
//!                                               └► mpegtsmux ─► srtsink   (srt)
//! ```
//!
//! A URL's pipeline shares the recording's clock and base time, so timestamps (converted to
//! running time at the tap) line up.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::encode::{AudioCodecKind, VideoCodec};
use super::graph::{Desc, Node, el, from};
use crate::error::PipelineError;

pub const VIDEO_TAP: &str = "stream_video_tap";
pub const AUDIO_TAP: &str = "stream_audio_tap";

fn tap_queue(name: &str) -> Node {
    // Leaky: a slow stream drops frames; the recording never waits for it.
    el("queue", name)
        .p("leaky", "downstream")
        .p("max-size-time", 2_000_000_000u64)
        .p("max-size-buffers", 0)
        .p("max-size-bytes", 0)
}

/// Adds the taps (and, for launch lines, one branch per URL in `urls`).
pub fn add(d: &mut Desc, video: bool, audio: bool, urls: &[String]) {
    let taps = [
        (
            video,
            VideoCodec::H264.tee(),
            "stream_video_queue",
            VIDEO_TAP,
        ),
        (
            audio,
            AudioCodecKind::Aac.tee(),
            "stream_audio_queue",
            AUDIO_TAP,
        ),
    ];
    for (wanted, tee, queue, tap) in taps {
        if !wanted {
            continue;
        }
        d.push(vec![
            from(&tee),
            tap_queue(queue),
            Node::AppSink {
                name: tap.into(),
                launch: "fakesink sync=false".into(),
            },
        ]);
        d.sinks.push(tap.into());
        d.media.push(tap.into());
    }
    for (k, url) in urls.iter().enumerate() {
        let (mux, sink) = mux_and_sink(url);
        let mut words = Vec::new();
        if video {
            words.push(format!(
                "{}. ! queue ! h264parse config-interval=-1 ! {mux} name=stream{k}_mux",
                VideoCodec::H264.tee()
            ));
            words.push(format!("stream{k}_mux. ! {sink} 'location={url}'"));
        }
        if audio {
            words.push(format!(
                "{}. ! queue ! aacparse ! stream{k}_mux.",
                AudioCodecKind::Aac.tee()
            ));
        }
        d.extra_launch.push(words.join("  "));
    }
}

fn is_srt(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("srt://"))
}

fn mux_and_sink(url: &str) -> (&'static str, &'static str) {
    if is_srt(url) {
        ("mpegtsmux alignment=7", "srtsink")
    } else {
        ("flvmux streamable=true", "rtmp2sink")
    }
}

/// One URL's pipeline.
pub struct StreamPipe {
    pub pipeline: gst::Pipeline,
    pub video: Option<gstreamer_app::AppSrc>,
    pub audio: Option<gstreamer_app::AppSrc>,
}

/// Builds (not starts) the pipeline for `url`, named `name`, fed by appsrcs for the kinds the
/// recording has.
pub fn build(
    name: &str,
    url: &str,
    video: bool,
    audio: bool,
    clock: Option<&gst::Clock>,
    base_time: Option<gst::ClockTime>,
) -> Result<StreamPipe, PipelineError> {
    let make = |f: &str, n: &str| {
        gst::ElementFactory::make(f)
            .name(n)
            .build()
            .map_err(|_| PipelineError::MissingElement(f.to_string()))
    };
    let p = gst::Pipeline::with_name(name);
    let srt = is_srt(url);
    let mux = if srt {
        let m = make("mpegtsmux", "mux")?;
        // 7 TS packets per buffer: one SRT message each (1316 bytes), what receivers expect.
        m.set_property("alignment", 7i32);
        m
    } else {
        let m = make("flvmux", "mux")?;
        m.set_property("streamable", true);
        m
    };
    // Aggregators in a live pipeline wait this long for a late input before going on.
    mux.set_property("latency", 300_000_000u64);
    let sink = if srt {
        let s = make("srtsink", "sink")?;
        s.set_property("uri", url);
        s.set_property("wait-for-connection", false);
        s
    } else {
        let s = make("rtmp2sink", "sink")?;
        s.set_property("location", url);
        s
    };
    sink.set_property("sync", false);
    sink.set_property("async", false);
    p.add_many([&mux, &sink])?;
    mux.link(&sink)
        .map_err(|_| PipelineError::Build("cannot link the stream muxer".into()))?;
    let src = |kind: &str, parser: &str| -> Result<gstreamer_app::AppSrc, PipelineError> {
        let a = gstreamer_app::AppSrc::builder()
            .name(format!("{kind}_src"))
            .is_live(true)
            .format(gst::Format::Time)
            .do_timestamp(false)
            .max_bytes(0)
            .max_time(gst::ClockTime::from_seconds(2))
            .leaky_type(gstreamer_app::AppLeakyType::Downstream)
            .build();
        let q = make("queue", &format!("{kind}_queue"))?;
        let parse = make(parser, &format!("{kind}_parse"))?;
        if parser == "h264parse" {
            parse.set_property("config-interval", -1i32);
        }
        p.add_many([a.upcast_ref(), &q, &parse])?;
        gst::Element::link_many([a.upcast_ref(), &q, &parse])
            .map_err(|_| PipelineError::Build(format!("cannot link the stream {kind} branch")))?;
        parse
            .link(&mux)
            .map_err(|_| PipelineError::Build(format!("cannot link the stream {kind} parser")))?;
        Ok(a)
    };
    let v = if video {
        Some(src("video", "h264parse")?)
    } else {
        None
    };
    let a = if audio {
        Some(src("audio", "aacparse")?)
    } else {
        None
    };
    if let (Some(c), Some(b)) = (clock, base_time) {
        p.use_clock(Some(c));
        p.set_start_time(gst::ClockTime::NONE);
        p.set_base_time(b);
    }
    Ok(StreamPipe {
        pipeline: p,
        video: v,
        audio: a,
    })
}
