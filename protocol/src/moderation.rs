//! Bodies of the moderation routes: reports, the queue, suspensions, roles, the audit log.

use serde::{Deserialize, Serialize};

/// `POST /v1/reports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// post, comment, message or account
    pub target_type: String,
    pub target_id: String,
    /// One of a fixed list (see docs/api-contract.md).
    pub reason: String,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReportView {
    pub id: String,
    pub reporter_id: String,
    pub target_type: &'static str,
    pub target_id: String,
    pub reason: &'static str,
    pub note: String,
    pub state: &'static str,
    pub created_at: String,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    pub resolution_note: String,
}

#[derive(Debug, Serialize)]
pub struct ReportEnvelope {
    pub report: ReportView,
}

/// `POST /v1/moderation/reports/{id}/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// actioned or dismissed
    pub resolution: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /v1/moderation/users/{id}/suspension` (and the reason of a removal, optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModerationStatus {
    pub user_id: String,
    pub role: &'static str,
    pub suspended: bool,
}

#[derive(Debug, Serialize)]
pub struct AuditView {
    pub id: String,
    pub at: String,
    /// A user id, or `admin-cli` for the operator's `nova admin` commands.
    pub actor: String,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    pub reason: String,
}
