//! JPEG snapshots: raw frames off `video_raw_tee`, one every `interval_s`, scaled and encoded;
//! the handler writes each from the appsink as `{prefix}_00000.jpg`, `{prefix}_00001.jpg`, ...
//! creating the file itself (`O_CREAT|O_EXCL|O_NOFOLLOW`).
//!
//! ```text
//!   video_raw_tee ─► img_queue (leaky) ─► img_rate ─► img_scale ─► img_convert ─► img_caps
//!                 ─► img_enc (jpegenc) ─► img_sink (appsink)
//! ```

use super::encode::VIDEO_RAW_TEE;
use super::graph::{Desc, Node, caps, el, from};
use crate::model::ImagesOutput;

pub const SINK: &str = "img_sink";

/// The file name of image `n`.
pub fn image_name(im: &ImagesOutput, n: u32) -> String {
    crate::model::numbered::NumberedName::new(&im.stem, "jpg").name(n)
}

/// `1 / interval_s` as a fraction (num, den).
pub fn rate(interval_s: f64) -> (u64, u64) {
    let den = (interval_s * 1000.0).round().max(1.0) as u64;
    let num = 1000u64;
    let g = gcd(num, den);
    (num / g, den / g)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub fn add(d: &mut Desc, im: &ImagesOutput) {
    let (n, dd) = rate(im.interval_s);
    d.push(vec![
        from(VIDEO_RAW_TEE),
        // Leaky: a slow disk drops snapshots, never holds the recording up.
        el("queue", "img_queue")
            .p("leaky", "downstream")
            .p("max-size-buffers", 2)
            .p("max-size-bytes", 0)
            .p("max-size-time", 0),
        el("videorate", "img_rate").p("drop-only", true),
        el("videoscale", "img_scale"),
        el("videoconvert", "img_convert"),
        caps(
            "img_caps",
            format!(
                "video/x-raw,format=I420,width={},height={},framerate={n}/{dd},pixel-aspect-ratio=1/1",
                im.width, im.height
            ),
        ),
        el("jpegenc", "img_enc").p("quality", 85),
        Node::AppSink {
            name: SINK.into(),
            launch: format!(
                "multifilesink name={SINK} 'location={}'",
                im.dir
                    .join(crate::model::numbered::NumberedName::new(&im.stem, "jpg").pattern())
                    .display()
            ),
        },
    ]);
    d.sinks.push(SINK.into());
    d.media.push("img_enc".into());
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_rate_is_one_over_the_interval() {
        assert_eq!(super::rate(10.0), (1, 10));
        assert_eq!(super::rate(2.5), (2, 5));
        assert_eq!(super::rate(1.0), (1, 1));
    }
}
