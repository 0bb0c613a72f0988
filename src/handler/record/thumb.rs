//! The thumbnail's two ends in the handler (see `pipeline::output_thumb`): a gate that lets one
//! frame per interval into the branch (keyframes only for copied video, so its decoder runs at
//! most once per interval), and the writer of each JPEG, replaced atomically beside the record.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::pipeline::output_thumb::{QUEUE, SINK};

pub fn attach(pipeline: &gst::Pipeline, path: PathBuf, every: Duration) {
    let (Some(queue), Some(sink)) = (pipeline.by_name(QUEUE), pipeline.by_name(SINK)) else {
        return;
    };
    let keyframes_only = pipeline.by_name("thumb_dec").is_some();
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    if let Some(pad) = queue.static_pad("sink") {
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            if keyframes_only && buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                return crate::pipeline::DROP_BUFFER;
            }
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < every) {
                return crate::pipeline::DROP_BUFFER;
            }
            *last = Some(Instant::now());
            gst::PadProbeReturn::Ok
        });
    }
    let Ok(sink) = sink.downcast::<gst_app::AppSink>() else {
        return;
    };
    sink.set_max_buffers(1);
    sink.set_drop(true);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                if let Ok(sample) = s.pull_sample()
                    && let Some(buf) = sample.buffer()
                    && let Ok(map) = buf.map_readable()
                {
                    // Best effort: a picture that cannot be written is skipped.
                    let _ = crate::store::write_atomic(
                        &path,
                        map.as_slice(),
                        crate::store::Durability::Cached,
                    );
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}
