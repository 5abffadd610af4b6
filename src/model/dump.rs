//! What `/config_dump` shows of the dynamic resources: each resource as it arrived.

use std::sync::Arc;
use std::time::SystemTime;

/// One resource received over xDS, as it arrived.
#[derive(Clone, Debug)]
pub struct DumpEntry {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub last_updated: SystemTime,
    pub resource: Arc<prost_types::Any>,
}

/// The dynamic resources of a snapshot, by type, for `/config_dump`.
#[derive(Clone, Debug, Default)]
pub struct DynamicDump {
    /// Listeners serving now.
    pub listeners: Vec<DumpEntry>,
    /// Listeners received but waiting for their route configurations.
    pub warming_listeners: Vec<DumpEntry>,
    pub clusters: Vec<DumpEntry>,
    /// Clusters received but waiting for their endpoints.
    pub warming_clusters: Vec<DumpEntry>,
    pub route_configs: Vec<DumpEntry>,
    pub endpoints: Vec<DumpEntry>,
    /// SDS secrets received (private keys are redacted when dumped).
    pub secrets: Vec<DumpEntry>,
    /// Secrets named by listeners or clusters that have not arrived.
    pub warming_secrets: Vec<Arc<str>>,
    /// The last accepted `version_info` per type URL.
    pub versions: Vec<(&'static str, Arc<str>, SystemTime)>,
}
