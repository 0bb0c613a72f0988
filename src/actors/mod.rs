//! One file per actor: the actor, then each message it takes (with its doc line and result type),
//! then its handler. `actors.md` at the top of the repository draws who sends what to whom.

pub mod admission;
pub mod affinity;
pub mod cost_learner;
pub mod cpu_monitor;
pub mod delivery;
pub mod disk_monitor;
pub mod pipeline;
pub mod supervisor;
