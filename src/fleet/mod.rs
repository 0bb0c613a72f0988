//! Fleet coordination over Redis: node registry with heartbeats, fleet-wide egress records, and
//! placement of a job on the best node. (Built in the fleet issue; until then a node refuses a
//! configured `fleet.redis_url` at start rather than pretending to be part of a fleet.)

use crate::api::egress::EndAction;
use crate::error::ApiError;
use crate::model::{EgressInfo, EgressRequest, EgressStatus};
use crate::service::AppState;

pub struct Fleet;

impl Fleet {
    pub async fn place(&self, _state: &AppState, _req: EgressRequest) -> Result<EgressInfo, ApiError> {
        Err(ApiError::Unavailable("fleet placement is not available".into()))
    }
    pub async fn list(&self, _statuses: Option<Vec<EgressStatus>>) -> Result<Vec<EgressInfo>, ApiError> {
        Err(ApiError::Unavailable("fleet listing is not available".into()))
    }
    pub async fn get(&self, _id: &str) -> Result<Option<EgressInfo>, ApiError> {
        Ok(None)
    }
    pub async fn end_remote(&self, _id: &str, _action: EndAction) -> Result<Option<EgressInfo>, ApiError> {
        Ok(None)
    }
}
