//! The AffinityScorer actor: answers "how well would this node take a request of type T?"
//! (`GET /v1/affinity` scores only; `POST /v1/affinity` also takes a claim) for placement.
//!
//! A claim is taken through Admission, so concurrent affinity requests each see the others'
//! claims, and the node is scored as it was in the same atomic step (`rules::scoring`). A node that
//! refuses scores -1 with the reason (`cpu`, `type_limit`, `draining`) and holds no claim. Equal
//! scores across nodes are broken at random by the fleet, not here.

use actix::prelude::*;
use serde::Serialize;
use slog::{Logger, debug, warn};

use crate::actors::admission::{Admission, CheckRequest, GetNodeState, TakeClaim};
use crate::config::AffinityMode;
use crate::model::EgressType;
use crate::rules::pricer::Pricer;
use crate::rules::scoring::{REFUSED, score};

pub struct AffinityScorer {
    mode: AffinityMode,
    /// Where claims are taken.
    admission: Addr<Admission>,
    /// Prices a type-only request at its default class (learned costs); None: admission's
    /// configured cost.
    pricer: Option<Pricer>,
    log: Logger,
}

impl AffinityScorer {
    pub fn new(mode: AffinityMode, admission: Addr<Admission>, log: Logger) -> Self {
        AffinityScorer {
            mode,
            admission,
            pricer: None,
            log,
        }
    }

    /// Price requests that give no `estimated_cpu` with `pricer`.
    pub fn with_pricer(mut self, pricer: Pricer) -> Self {
        self.pricer = Some(pricer);
        self
    }
}

impl Actor for AffinityScorer {
    type Context = Context<Self>;
}

/// This node's answer to an affinity request.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Affinity {
    pub node_id: String,
    pub egress_type: EgressType,
    /// -1 when the node cannot take the request, else in [0, 1] (higher is better).
    #[schema(minimum = -1, maximum = 1)]
    pub score: f64,
    /// The claim holding the slot and CPU for the request (`POST` only); pass it with the start
    /// request.
    pub claim_id: Option<String>,
    /// Why the score is -1: `cpu`, `type_limit`, `draining` (or `unavailable`).
    pub reason: Option<String>,
}

/// Asks for this node's score for a request of `egress_type` costing `cost` cores (None = the
/// type's price at its default video: learned, or configured); with `take_claim`, also takes a
/// claim when the node can admit it. Returns an `Affinity`.
#[derive(Debug, Message)]
#[rtype(result = "Affinity")]
pub struct GetAffinity {
    pub egress_type: EgressType,
    pub cost: Option<f64>,
    /// Hold a slot and CPU for the request (`POST /v1/affinity`), or only score (`GET`).
    pub take_claim: bool,
}

impl Handler<GetAffinity> for AffinityScorer {
    type Result = ResponseFuture<Affinity>;

    fn handle(&mut self, msg: GetAffinity, _: &mut Context<Self>) -> Self::Result {
        let mode = self.mode;
        let admission = self.admission.clone();
        let log = self.log.clone();
        let priced = self
            .pricer
            .as_ref()
            .map(|p| p.price_of_type(msg.egress_type));
        Box::pin(async move {
            let egress_type = msg.egress_type;
            let refused = |node_id: String, reason: &str| Affinity {
                node_id,
                egress_type,
                score: REFUSED,
                claim_id: None,
                reason: Some(reason.to_string()),
            };
            let cost = msg.cost.or(priced);
            let answer = if msg.take_claim {
                admission
                    .send(TakeClaim { egress_type, cost })
                    .await
                    .map(|r| r.map(|c| (c.node_id, c.before, Some(c.claim_id))))
            } else {
                admission
                    .send(CheckRequest { egress_type, cost })
                    .await
                    .map(|r| r.map(|(node_id, before)| (node_id, before, None)))
            };
            match answer {
                Ok(Ok((node_id, before, claim_id))) => {
                    let s = score(mode, egress_type, &before);
                    debug!(log, "affinity"; "type" => egress_type.as_str(), "score" => s, "claim_id" => &claim_id);
                    Affinity {
                        node_id,
                        egress_type,
                        score: s,
                        claim_id,
                        reason: None,
                    }
                }
                Ok(Err(e)) => {
                    debug!(log, "affinity refused"; "type" => egress_type.as_str(), "reason" => e.reason());
                    let node_id = admission
                        .send(GetNodeState)
                        .await
                        .map(|s| s.node_id)
                        .unwrap_or_default();
                    refused(node_id, e.reason())
                }
                Err(e) => {
                    warn!(log, "admission does not answer"; "error" => %e);
                    refused(String::new(), "unavailable")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::admission::AdmitJob;
    use crate::config::Config;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn start(mode: AffinityMode) -> (Addr<Admission>, Addr<AffinityScorer>) {
        let mut c = Config::default();
        c.cpu.max_utilization = 1.0;
        c.limits.max_concurrent_web = 1;
        let admission = Admission::new(&c, "ND_a".into(), 8.0, log()).start();
        let scorer = AffinityScorer::new(mode, admission.clone(), log()).start();
        (admission, scorer)
    }

    #[actix_rt::test]
    async fn concurrent_requests_see_each_others_claims() {
        let (admission, scorer) = start(AffinityMode::Spread);
        let a = scorer
            .send(GetAffinity {
                egress_type: EgressType::Track,
                cost: Some(4.0),
                take_claim: true,
            })
            .await
            .unwrap();
        assert_eq!(
            (a.node_id.as_str(), a.score, a.reason.as_deref()),
            ("ND_a", 1.0, None)
        );
        let b = scorer
            .send(GetAffinity {
                egress_type: EgressType::Track,
                cost: Some(4.0),
                take_claim: true,
            })
            .await
            .unwrap();
        assert_eq!(b.score, 0.5);
        assert_ne!(a.claim_id, b.claim_id);
        // Full: refused with the reason and no claim.
        let c = scorer
            .send(GetAffinity {
                egress_type: EgressType::Track,
                cost: Some(1.0),
                take_claim: true,
            })
            .await
            .unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.score, c.claim_id, c.reason.as_deref()),
            ("ND_a", -1.0, None, Some("cpu"))
        );
        // The claim is what the start request uses.
        admission
            .send(AdmitJob {
                egress_id: "EG_1".into(),
                egress_type: EgressType::Track,
                cost: 4.0,
                claim_id: a.claim_id,
            })
            .await
            .unwrap()
            .unwrap();
        let s = admission.send(GetNodeState).await.unwrap();
        assert_eq!(
            (s.types["track"].active, s.types["track"].pending_claims),
            (1, 1)
        );
    }

    #[actix_rt::test]
    async fn scoring_without_a_claim_holds_nothing() {
        let (admission, scorer) = start(AffinityMode::TypeAware);
        for _ in 0..3 {
            let a = scorer
                .send(GetAffinity {
                    egress_type: EgressType::Web,
                    cost: None,
                    take_claim: false,
                })
                .await
                .unwrap();
            assert_eq!((a.score, a.claim_id.as_deref()), (1.0, None));
        }
        let s = admission.send(GetNodeState).await.unwrap();
        assert_eq!(s.types["web"].pending_claims, 0);
    }

    #[actix_rt::test]
    async fn type_limit_refusal() {
        let (_, scorer) = start(AffinityMode::TypeAware);
        let a = scorer
            .send(GetAffinity {
                egress_type: EgressType::Web,
                cost: None,
                take_claim: true,
            })
            .await
            .unwrap();
        assert_eq!(a.score, 1.0);
        let b = scorer
            .send(GetAffinity {
                egress_type: EgressType::Web,
                cost: None,
                take_claim: true,
            })
            .await
            .unwrap();
        assert_eq!(
            (b.score, b.reason.as_deref(), b.claim_id.as_deref()),
            (-1.0, Some("type_limit"), None)
        );
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["egress_type"], "web");
    }

    #[actix_rt::test]
    async fn pack_prefers_the_busy_node() {
        let (_, scorer) = start(AffinityMode::Pack);
        let idle = scorer
            .send(GetAffinity {
                egress_type: EgressType::Track,
                cost: Some(2.0),
                take_claim: true,
            })
            .await
            .unwrap();
        let busy = scorer
            .send(GetAffinity {
                egress_type: EgressType::Track,
                cost: Some(2.0),
                take_claim: true,
            })
            .await
            .unwrap();
        assert!(busy.score > idle.score, "{} <= {}", busy.score, idle.score);
    }
}
