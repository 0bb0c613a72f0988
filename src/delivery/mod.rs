//! Delivery: outputs to object storage through a durable queue, and a disk that never fills.
//!
//! ```text
//!  Pipeline (file finalized) ──FinishEgress──► Delivery actor ──► journal (state_dir/uploads)
//!  handler events (segments, images) ─Enqueue─►      │               │ entry written first
//!                                                    ▼               ▼
//!                                        upload (multipart, retries, backup) ──► S3/GCS/Azure
//!  DiskMonitor: output growth per egress ──► admission (`reason: disk`), "Disk full" stops,
//!               retention (`storage.delete_after`)
//! ```
//!
//! `target.rs` the storage targets and their clients, `journal.rs` the durable queue,
//! `upload.rs` one upload, `disk.rs` and `retention.rs` the pure rules. The actors are
//! `actors/delivery.rs` and `actors/disk_monitor.rs`.

pub mod disk;
pub mod journal;
pub mod progress;
pub mod retention;
pub mod target;
pub mod upload;
