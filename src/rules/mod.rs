//! Pure decision rules that the actors wrap: no clocks, no I/O, no actors. Time is always an
//! explicit `now_ms` argument, so every rule can be driven by a fake clock in table and property
//! tests.
//!
//! - `admission`: the node's CPU and per-type ledger (running jobs, pending claims, drain) and
//!   the admit / claim decisions (`Admission` actor).
//! - `scoring`: how well a node suits a request under each affinity mode (`AffinityScorer`).
//! - `costs`: cost classes, per-job CPU summaries, the learned estimate per class and prices
//!   (`CostLearner`).
//! - `capacity`: the fleet's autoscaling figures from its nodes' reports (`GET /v1/fleet/capacity`).
//! - `fidelity`: whether a recording holds what its source announced (failure, warnings).
//! - `health`: when a black or frozen picture or silent sound becomes a warning, and clears.
//! - `overload`: the soft/hard escalation that picks one egress to stop, then kill (`Supervisor`).
//! - `outcome`: the final status of an egress, for a supervised end and an orphan alike.
//! - `placement`: fleet placement's refusals, its retry decision, an egress id's owner and the
//!   answer when no node takes a job (`fleet::placement`).
//! - `pricer`: the learned cost table's read side, shared without a message.

pub mod admission;
pub mod capacity;
pub mod costs;
pub mod fidelity;
pub mod health;
pub mod outcome;
pub mod overload;
pub mod placement;
pub mod pricer;
pub mod scoring;
