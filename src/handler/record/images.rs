//! The image output: each JPEG the appsink receives is written by the handler itself as
//! `{prefix}_{n:05}.jpg`, created exclusively (or the service's empty placeholder for the first)
//! and never through a symlink.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::model::ImagesOutput;
use crate::pipeline::output_images::image_name;

pub const IMAGE_MESSAGE: &str = "egress-image";

/// Writes every sample of `sink` as the next image; posts `IMAGE_MESSAGE` with the count.
pub fn attach(sink: &gst::Element, out: &ImagesOutput) -> Arc<AtomicU32> {
    let count = Arc::new(AtomicU32::new(0));
    let Ok(sink) = sink.clone().downcast::<gst_app::AppSink>() else {
        return count;
    };
    let n = count.clone();
    let out = out.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let Ok(sample) = s.pull_sample() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Some(buf) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(map) = buf.map_readable() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let k = n.load(Ordering::Relaxed);
                let path = out.dir.join(image_name(&out, k));
                let written =
                    crate::outputs::open_new(&path).and_then(|mut f| f.write_all(map.as_slice()));
                // A name taken already is skipped, never overwritten.
                n.store(k + 1, Ordering::Relaxed);
                if written.is_ok() {
                    let st = gst::Structure::builder(IMAGE_MESSAGE)
                        .field("count", k + 1)
                        .build();
                    let _ = s.post_message(gst::message::Application::builder(st).src(s).build());
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    count
}
