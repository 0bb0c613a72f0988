//! The graph model every builder in `pipeline/` writes to: chains of named elements joined by
//! links. One `Desc` is both instantiated element by element for the handler
//! (`ElementFactory::make(..).name(role)`, then linked) and rendered as a `gst-launch-1.0` line
//! for the `scripts/bench` baseline, so the two can never drift apart.
//!
//! ```text
//!   Entry(src0, video) ─► queue ─► videoconvert ─► ... ─► Link(mux)
//!   (a dynamic pad of        (every element named by its role:
//!    uridecodebin3)           src0_video_queue, video_enc, ...)
//! ```

use std::collections::HashMap;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::error::PipelineError;

/// What kind of stream a source pad carries, as the graph consumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Decoded video frames.
    RawVideo,
    /// Decoded audio samples.
    RawAudio,
    /// H.264 kept as is (copied).
    H264,
    /// H.265 kept as is (copied into MP4 or Matroska).
    H265,
    /// VP8 and VP9 kept as they are (a WebRTC source's, copied into WebM).
    Vp8,
    Vp9,
    /// AAC kept as is (copied).
    Aac,
    /// Opus kept as is (a WebRTC source's, copied into an MP4 or Matroska file that takes Opus).
    Opus,
    /// Anything this graph does not record (subtitles, a second video...): goes to a fakesink.
    Unused,
}

impl StreamKind {
    /// The caps a launch line uses to pick this pad of a `uridecodebin3`.
    fn launch_caps(self) -> &'static str {
        match self {
            StreamKind::RawVideo => "video/x-raw",
            StreamKind::RawAudio => "audio/x-raw",
            StreamKind::H264 => "video/x-h264",
            StreamKind::H265 => "video/x-h265",
            StreamKind::Vp8 => "video/x-vp8",
            StreamKind::Vp9 => "video/x-vp9",
            StreamKind::Aac => "audio/mpeg",
            StreamKind::Opus => "audio/x-opus",
            StreamKind::Unused => "ANY",
        }
    }

    /// Whether this is a video stream (decoded or copied).
    pub fn is_video(self) -> bool {
        matches!(
            self,
            StreamKind::RawVideo
                | StreamKind::H264
                | StreamKind::H265
                | StreamKind::Vp8
                | StreamKind::Vp9
        )
    }
}

/// One node of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An element: factory, role name, properties (`pad::prop` for a request pad's property).
    Element {
        factory: String,
        name: String,
        props: Vec<(String, String)>,
    },
    /// A `capsfilter` with these caps.
    Caps { name: String, caps: String },
    /// The head of a chain fed by source `source`'s dynamic pad of this kind.
    Entry { source: usize, kind: StreamKind },
    /// The tail of a chain: link into the element called `target` (a request pad, or `pad`).
    Link { target: String, pad: Option<String> },
    /// The output file: `fdsink` on the already opened file in the handler, `filesink` in a
    /// launch line.
    FileSink { name: String, path: String },
    /// The head of a chain fed by a request pad of the element called `element` (a `tee`).
    From { element: String },
    /// An `appsink` the handler reads (images, streams); `launch` is what a launch line runs in
    /// its place (e.g. `multifilesink location=...`).
    AppSink { name: String, launch: String },
}

/// Property keys starting with this are rendered in launch lines only.
pub const LAUNCH_ONLY: &str = "@";
/// Property keys starting with this take an element, made from the value: a factory and its
/// properties (`filesink buffer-mode=unbuffered`). Set before any link (splitmuxsink makes its
/// default muxer when its first pad is requested). Not rendered in launch lines.
pub const OBJECT: &str = "!";

/// An element node, properties added with `p`.
pub fn el(factory: &str, name: impl Into<String>) -> Node {
    Node::Element {
        factory: factory.into(),
        name: name.into(),
        props: Vec::new(),
    }
}

pub fn caps(name: impl Into<String>, caps: impl Into<String>) -> Node {
    Node::Caps {
        name: name.into(),
        caps: caps.into(),
    }
}

pub fn link(target: &str) -> Node {
    Node::Link {
        target: target.into(),
        pad: None,
    }
}

/// The tail of a chain linked into `target`'s request pad named by template `pad`.
pub fn link_pad(target: &str, pad: &str) -> Node {
    Node::Link {
        target: target.into(),
        pad: Some(pad.into()),
    }
}

/// The head of a chain fed by a `tee` called `element`.
pub fn from(element: &str) -> Node {
    Node::From {
        element: element.into(),
    }
}

/// A `tee` named `name`: every consumer gets its own request pad.
pub fn tee(name: &str) -> Node {
    // allow-not-linked: a tee whose only consumer was removed keeps the graph running.
    el("tee", name).p("allow-not-linked", true)
}

impl Node {
    /// Adds a property (elements only).
    pub fn p(mut self, k: &str, v: impl ToString) -> Node {
        if let Node::Element { props, .. } = &mut self {
            props.push((k.to_string(), v.to_string()));
        }
        self
    }
}

/// A graph: chains of nodes, plus URI sources named `src{i}` that a launch line renders as
/// `uridecodebin3` (the handler builds those itself, see `source_uri`).
#[derive(Debug, Clone, Default)]
pub struct Desc {
    pub chains: Vec<Vec<Node>>,
    /// (index, uri) of each URI source, for the launch line.
    pub uri_sources: Vec<(usize, String)>,
    /// The sinks the end waits for: the recording is over when EOS reached each of them.
    pub sinks: Vec<String>,
    /// Elements whose first input buffer means media reached an output.
    pub media: Vec<String>,
    /// Launch-line words for what the handler runs outside this graph (stream pipelines).
    pub extra_launch: Vec<String>,
}

impl Desc {
    pub fn push(&mut self, chain: Vec<Node>) {
        self.chains.push(chain);
    }

    /// Every element factory the handler will instantiate, once each.
    pub fn factories(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in self.chains.iter().flatten() {
            let f = match n {
                Node::Element { factory, .. } => factory.as_str(),
                Node::Caps { .. } => "capsfilter",
                Node::FileSink { .. } => "fdsink",
                Node::AppSink { .. } => "appsink",
                _ => continue,
            };
            if !out.iter().any(|o| o == f) {
                out.push(f.to_string());
            }
        }
        out
    }

    /// Every element name, for tests: role names are unique in a pipeline.
    pub fn names(&self) -> Vec<&str> {
        self.chains
            .iter()
            .flatten()
            .filter_map(|n| match n {
                Node::Element { name, .. } | Node::Caps { name, .. } => Some(name.as_str()),
                Node::FileSink { name, .. } | Node::AppSink { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The graph as a shell-quoted `gst-launch-1.0 -e` argument list.
    pub fn launch(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        for (i, uri) in &self.uri_sources {
            words.push(format!(
                "uridecodebin3 name=src{i} {}",
                shell_quote(&format!("uri={uri}"))
            ));
        }
        for chain in &self.chains {
            let nodes: Vec<String> = chain.iter().map(render_node).collect();
            words.push(nodes.join(" ! "));
        }
        words.extend(self.extra_launch.iter().cloned());
        words.join("  ")
    }
}

fn render_node(n: &Node) -> String {
    match n {
        Node::Element {
            factory,
            name,
            props,
        } => {
            let mut w = vec![factory.clone(), format!("name={name}")];
            w.extend(
                props
                    .iter()
                    .filter(|(k, _)| !k.starts_with(OBJECT))
                    .map(|(k, v)| {
                        shell_quote(&format!("{}={v}", k.strip_prefix(LAUNCH_ONLY).unwrap_or(k)))
                    }),
            );
            w.join(" ")
        }
        Node::Caps { caps, .. } => shell_quote(caps),
        Node::Entry { source, kind } => format!("src{source}. ! {}", kind.launch_caps()),
        Node::Link { target, pad } => format!("{target}.{}", pad.as_deref().unwrap_or("")),
        Node::FileSink { name, path } => format!(
            "filesink name={name} {}",
            shell_quote(&format!("location={path}"))
        ),
        Node::From { element } => format!("{element}."),
        Node::AppSink { launch, .. } => launch.clone(),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_./:-+=,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// What instantiating a `Desc` gives the handler: where each source's pads go.
pub struct Built {
    /// The sink pad each (source, kind) entry links to.
    pub entries: HashMap<(usize, StreamKind), gst::Pad>,
}

/// Creates every element of `desc` in `pipeline` (named by role) and links them; `fd` is the
/// opened output file the `FileSink` writes to.
pub fn instantiate(desc: &Desc, pipeline: &gst::Pipeline, fd: i32) -> Result<Built, PipelineError> {
    for f in desc.factories() {
        if gst::ElementFactory::find(&f).is_none() {
            return Err(PipelineError::MissingElement(f));
        }
    }
    let mut entries = HashMap::new();
    // Pad properties (`sink_0::xpos`) are set once every link (and so every request pad) exists.
    let mut pad_props: Vec<(gst::Element, String, String, String)> = Vec::new();
    // Created first: chains link into elements that later chains create (`mux`, `comp`).
    let mut created: Vec<Vec<Option<gst::Element>>> = Vec::new();
    for chain in &desc.chains {
        let mut row = Vec::new();
        for n in chain {
            row.push(make(n, fd, &mut pad_props)?);
        }
        for e in row.iter().flatten() {
            pipeline.add(e)?;
        }
        created.push(row);
    }
    for (chain, row) in desc.chains.iter().zip(&created) {
        let mut prev: Option<&gst::Element> = None;
        let mut entry: Option<(usize, StreamKind)> = None;
        for (n, e) in chain.iter().zip(row) {
            match (n, e) {
                (Node::Entry { source, kind }, _) => entry = Some((*source, *kind)),
                (Node::From { element }, _) => {
                    prev =
                        Some(created_by_name(&created, element).ok_or_else(|| {
                            PipelineError::Build(format!("no element {element}"))
                        })?);
                }
                (Node::Link { target, pad }, _) => {
                    let t = pipeline
                        .by_name(target)
                        .ok_or_else(|| PipelineError::Build(format!("no element {target}")))?;
                    let p = prev.ok_or_else(|| {
                        PipelineError::Build(format!("link to {target} from nothing"))
                    })?;
                    let linked = match pad {
                        Some(pad) => p.link_pads(None, &t, Some(pad.as_str())),
                        None => p.link(&t),
                    };
                    linked.map_err(|_| {
                        PipelineError::Build(format!("cannot link {} to {target}", p.name()))
                    })?;
                }
                (_, Some(e)) => {
                    if let Some(p) = prev {
                        p.link(e).map_err(|_| {
                            PipelineError::Build(format!(
                                "cannot link {} to {}",
                                p.name(),
                                e.name()
                            ))
                        })?;
                    } else if let Some(key) = entry.take() {
                        let pad = e.static_pad("sink").ok_or_else(|| {
                            PipelineError::Build(format!("{} has no sink pad", e.name()))
                        })?;
                        entries.insert(key, pad);
                    }
                    prev = Some(e);
                }
                (_, None) => {}
            }
        }
    }
    for (e, pad, k, v) in pad_props {
        let p = e
            .static_pad(&pad)
            .ok_or_else(|| PipelineError::Build(format!("{} has no pad {pad}", e.name())))?;
        p.set_property_from_str(&k, &v);
    }
    Ok(Built { entries })
}

fn make(
    n: &Node,
    fd: i32,
    pad_props: &mut Vec<(gst::Element, String, String, String)>,
) -> Result<Option<gst::Element>, PipelineError> {
    let build_err = |what: &str, e: gst::glib::BoolError| {
        PipelineError::Build(format!("cannot create {what}: {e}"))
    };
    Ok(Some(match n {
        Node::Element {
            factory,
            name,
            props,
        } => {
            let mut b = gst::ElementFactory::make(factory).name(name.as_str());
            let mut deferred = Vec::new();
            for (k, v) in props {
                if k.starts_with(LAUNCH_ONLY) || k.starts_with(OBJECT) {
                    continue;
                }
                match k.split_once("::") {
                    Some((pad, prop)) => deferred.push((pad.to_string(), prop.to_string(), v)),
                    None => b = b.property_from_str(k, v),
                }
            }
            let e = b.build().map_err(|e| build_err(name, e))?;
            for (k, v) in props {
                if let Some(prop) = k.strip_prefix(OBJECT) {
                    let mut words = v.split_whitespace();
                    let factory = words.next().unwrap_or_default();
                    let mut ob = gst::ElementFactory::make(factory);
                    for kv in words {
                        if let Some((pk, pv)) = kv.split_once('=') {
                            ob = ob.property_from_str(pk, pv);
                        }
                    }
                    let obj = ob.build().map_err(|e| build_err(factory, e))?;
                    e.set_property(prop, &obj);
                }
            }
            for (pad, prop, v) in deferred {
                pad_props.push((e.clone(), pad, prop, v.clone()));
            }
            e
        }
        Node::Caps { name, caps } => {
            let caps: gst::Caps = caps
                .parse()
                .map_err(|_| PipelineError::Build(format!("bad caps {caps}")))?;
            gst::ElementFactory::make("capsfilter")
                .name(name.as_str())
                .property("caps", caps)
                .build()
                .map_err(|e| build_err(name, e))?
        }
        Node::FileSink { name, .. } => {
            // Unbuffered writes: what the muxer wrote is on disk at once, so a killed process
            // loses nothing beyond the muxer's own index period.
            gst::ElementFactory::make("fdsink")
                .name(name.as_str())
                .property("fd", fd)
                .property("sync", false)
                .build()
                .map_err(|e| build_err(name, e))?
        }
        Node::AppSink { name, .. } => gst::ElementFactory::make("appsink")
            .name(name.as_str())
            .property("sync", false)
            .property("async", false)
            .build()
            .map_err(|e| build_err(name, e))?,
        Node::Entry { .. } | Node::Link { .. } | Node::From { .. } => return Ok(None),
    }))
}

fn created_by_name<'a>(
    created: &'a [Vec<Option<gst::Element>>],
    name: &str,
) -> Option<&'a gst::Element> {
    created
        .iter()
        .flatten()
        .flatten()
        .find(|e| e.name() == name)
}
