//! The layer order, kept by a test: each module uses only modules of its own layer or of the
//! layers before it, so the code has one way through and no import circles.
//!
//! ```text
//!   model, metrics, logging          what everything shares: requests, records, figures
//!   config                           the settings, checked at start
//!   error                            the error enums and their one HTTP mapping
//!   pipeline, media, hls, outputs,   GStreamer graphs, files and stores
//!     store, delivery
//!   rules                            pure decisions (admission, costs, fidelity, health)
//!   closing, timeline, repair,       a recording's process, its repair and its closing
//!     handler
//!   actors, events                   the actors and the event hub
//!   node                             one node's operations over its actors
//!   fleet                            nodes together, through Redis
//!   api, dashboard                   HTTP
//!   service, calibrate, cli          the programs
//! ```

/// The layers, in order; a module's layer is the index of the row that names it.
pub const LAYERS: &[&[&str]] = &[
    &["model", "metrics", "logging"],
    &["config"],
    &["error"],
    &["pipeline", "media", "hls", "outputs", "store", "delivery"],
    &["rules"],
    &["closing", "timeline", "repair", "handler"],
    &["actors", "events"],
    &["node"],
    &["fleet"],
    &["api", "dashboard"],
    &["service", "calibrate", "cli"],
];

/// The layer of top-level module `m`.
pub fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&m))
}

/// Every `crate::x` a source text names (imports and paths alike), with its line; unit tests at
/// the end of a file (`#[cfg(test)] mod tests`) are left out.
pub fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let name: String = rest[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = &rest[i + 7..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_module_uses_only_its_layer_and_those_before() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut against = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if ["lib", "main", "layers"].contains(&top.as_str()) {
                continue;
            }
            let Some(mine) = layer_of(&top) else {
                against.push(format!("{}: module '{top}' is in no layer", rel.display()));
                continue;
            };
            let text = std::fs::read_to_string(f).unwrap();
            for (line, dep) in crate_paths(&text) {
                match layer_of(&dep) {
                    Some(theirs) if theirs <= mine => {}
                    Some(_) => against.push(format!(
                        "{}:{line}: {top} uses {dep}, a later layer",
                        rel.display()
                    )),
                    None => {
                        against.push(format!("{}:{line}: '{dep}' is in no layer", rel.display()))
                    }
                }
            }
        }
        assert!(
            against.is_empty(),
            "imports against the layer order:\n{}",
            against.join("\n")
        );
    }

    #[test]
    fn paths_are_read_from_imports_and_code_not_comments_or_tests() {
        let text = "use crate::model::X;\nlet a = crate::fleet::keys::P; // crate::api\n\
                    #[cfg(test)]\nmod tests {\n use crate::service;\n}";
        assert_eq!(
            crate_paths(text),
            [(1, "model".to_string()), (2, "fleet".to_string())]
        );
    }
}
