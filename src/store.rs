//! Egress records in state_dir.
