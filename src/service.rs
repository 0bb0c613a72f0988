//! Wiring.
pub fn run(cfg: crate::config::Config) -> std::io::Result<()> { let _ = cfg; Ok(()) }
