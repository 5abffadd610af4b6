//! The bootstrap → the first [`Snapshot`] (static resources, through the same conversion
//! as xDS), and `dynamic_resources` → how the ADS client reaches its control plane.

use super::*;

/// Converts a bootstrap into the first snapshot (SDS files cannot be read: see
/// [`bootstrap_snapshot_with`]).
pub fn bootstrap_snapshot(
    bootstrap: &Bootstrap,
    stats: &Store,
    version: u64,
) -> Result<(Snapshot, Vec<String>), ConvertError> {
    bootstrap_snapshot_with(bootstrap, stats, version, None).map(|(s, ignored, _)| (s, ignored))
}

/// Converts a bootstrap into a snapshot, reading SDS files with `sds_files`; also returns
/// the ignored fields and the SDS files the static resources use (to watch them).
pub fn bootstrap_snapshot_with(
    bootstrap: &Bootstrap,
    stats: &Store,
    version: u64,
    sds_files: Option<SdsFileReader>,
) -> Result<
    (
        Snapshot,
        Vec<String>,
        std::collections::BTreeSet<std::path::PathBuf>,
    ),
    ConvertError,
> {
    let mut files = std::collections::BTreeSet::new();
    let mut ctx = Ctx {
        sds_files,
        stats,
        ignored: Vec::new(),
        cluster_index: Default::default(),
        dynamic: false,
        ads: false,
        secrets: Arc::default(),
        secret_refs: Default::default(),
        inbound: false,
        outbound: false,
        internal_listeners: internal_listeners_enabled(bootstrap),
        retries: Vec::new(),
    };
    if let Some(dr) = &bootstrap.dynamic_resources {
        validate_dynamic_resources(dr)?;
        ctx.ads = dr.ads_config.is_some();
    }
    if let Some(cm) = &bootstrap.cluster_manager {
        if cm.enable_deferred_cluster_creation {
            ctx.ignored
                .push("cluster_manager.enable_deferred_cluster_creation".into());
        }
    }
    if bootstrap.deferred_stat_options.is_some() {
        ctx.ignored.push("deferred_stat_options".into());
    }
    admin_access_logs(bootstrap)?;
    let admin = match &bootstrap.admin {
        Some(admin) => {
            if !admin.profile_path.is_empty() {
                ctx.ignored.push("admin.profile_path".into());
            }
            match &admin.address {
                Some(a) => Some(socket_addr(a, "admin", "admin.address")?),
                None => None,
            }
        }
        None => None,
    };
    if let Some(node) = &bootstrap.node {
        // This workload, for Istio's metrics and metadata exchange (before any filter is
        // converted: they capture it).
        let mut local = crate::model::istio::local_node(&node.id, node.metadata.as_ref());
        local.node_cluster = node.cluster.as_str().into();
        local.node_zone = node.locality.as_ref().map_or("", |l| &l.zone).into();
        ctx.stats.istio.node.store(Arc::new(local));
        if !node.user_agent_name.is_empty() || node.user_agent_version_type.is_some() {
            ctx.ignored.push("node.user_agent_*".into());
        }
    }
    let empty = Default::default();
    let sr = bootstrap.static_resources.as_ref().unwrap_or(&empty);
    let mut clusters = Vec::with_capacity(sr.clusters.len());
    for (i, c) in sr.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let cluster = cluster::convert(c, &mut ctx).map_err(|mut e| {
            e.path = join(&path, &e.path);
            e
        })?;
        // An SDS server sends its certificates (Istio's `envoy_metrics_service`, fed by
        // `sds-grpc`): the control thread holds it until they arrive and adds it then
        // (`Resources::hold_bootstrap_clusters`), as Envoy's static clusters warm on
        // SDS. Its name is known meanwhile, so routes may name it.
        let fed = ctx
            .secret_refs
            .iter()
            .any(|(_, s)| !matches!(s, SdsSource::File(_)));
        let at = if fed {
            ctx.secret_refs.clear();
            usize::MAX
        } else {
            static_sds(
                &mut ctx,
                &path,
                &format!("cluster '{}'", cluster.name),
                &mut files,
            )?;
            clusters.len()
        };
        if ctx.cluster_index.insert(cluster.name.clone(), at).is_some() {
            return Err(err(
                &format!("cluster '{}'", cluster.name),
                format!("{path}.name"),
                "duplicate cluster name",
            ));
        }
        if !fed {
            clusters.push(Arc::new(cluster));
        }
    }
    // Before the listeners: their connection managers take it as their provider.
    super::tracing::bootstrap_tracing(bootstrap.tracing.as_ref(), &mut ctx)?;
    let mut listeners = Vec::with_capacity(sr.listeners.len());
    let mut names = std::collections::HashSet::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        // A static listener may go unnamed: Envoy names it with a UUID.
        let named;
        let l = if l.name.is_empty() {
            named = pb_listener_named(l);
            &named
        } else {
            l
        };
        let listener = listener::convert(l, &mut ctx).map_err(|mut e| {
            e.path = join(&path, &e.path);
            e
        })?;
        static_sds(
            &mut ctx,
            &path,
            &format!("listener '{}'", listener.name),
            &mut files,
        )?;
        if !names.insert(listener.name.clone()) {
            return Err(err(
                &format!("listener '{}'", listener.name),
                format!("{path}.name"),
                "duplicate listener name",
            ));
        }
        listeners.push(Arc::new(listener));
    }
    let virtual_listeners = crate::model::virtual_index(&listeners);
    if let Some(sc) = &bootstrap.stats_config {
        stats.configure(super::stats_config::stats_config(sc)?);
    }
    // Checked here with the rest; the control thread runs them (`stats::sink`).
    super::stats_sinks::stats_sinks(bootstrap)?;
    let (runtime, unused) = super::runtime::runtime(bootstrap.layered_runtime.as_ref())?;
    ctx.ignored.extend(unused);
    bootstrap_extensions(&bootstrap.bootstrap_extensions)?;
    let global_cx = match &bootstrap.overload_manager {
        Some(om) => overload(om, &mut ctx)?,
        None => None,
    };
    let mut cluster_index = ctx.cluster_index;
    cluster_index.retain(|_, &mut i| i != usize::MAX);
    let snapshot = Snapshot {
        global_cx,
        runtime: Arc::new(runtime),
        virtual_listeners,
        version,
        built_at: SystemTime::now(),
        listeners,
        clusters,
        cluster_index,
        route_configs: Default::default(),
        admin,
        bootstrap: Arc::new(bootstrap.clone()),
        dynamic: Default::default(),
    };
    Ok((snapshot, ctx.ignored, files))
}

/// `admin.access_log`: one line per admin request (file, stdout and stderr loggers).
pub fn admin_access_logs(
    bootstrap: &Bootstrap,
) -> Result<Vec<crate::model::AccessLog>, ConvertError> {
    let logs = bootstrap
        .admin
        .as_ref()
        .map_or(&[][..], |a| &a.access_log[..]);
    logs.iter()
        .enumerate()
        .map(|(i, l)| {
            let at = format!("admin.access_log[{i}]");
            if l.filter.is_some() {
                return Err(super::err(
                    "bootstrap",
                    format!("{at}.filter"),
                    "access log filters are not supported on the admin listener",
                ));
            }
            super::access_log::access_log(l, "bootstrap", &at, None)
        })
        .collect()
}

/// `l` named with a random UUID (version 4), as Envoy names an unnamed static listener.
fn pb_listener_named(
    l: &crate::proto::envoy::config::listener::v3::Listener,
) -> crate::proto::envoy::config::listener::v3::Listener {
    let r = fastrand::u128(..);
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{r:032x}");
    let mut named = l.clone();
    named.name = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    named
}

/// Whether the bootstrap enables internal listeners (Istio's always does).
pub fn internal_listeners_enabled(
    b: &crate::proto::envoy::config::bootstrap::v3::Bootstrap,
) -> bool {
    b.bootstrap_extensions.iter().any(|e| {
        e.typed_config
            .as_ref()
            .and_then(super::istio::config_type)
            .as_deref()
            == Some(INTERNAL_LISTENER)
    })
}

const INTERNAL_LISTENER: &str = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

/// `bootstrap_extensions`: Istio's is the internal listener registry, which enables
/// internal listeners (its `buffer_size_kb` is a tuning knob: an internal connection is a
/// socket pair with the kernel's buffers); any other extension is refused by type.
fn bootstrap_extensions(
    exts: &[crate::proto::envoy::config::core::v3::TypedExtensionConfig],
) -> Result<(), ConvertError> {
    for (i, e) in exts.iter().enumerate() {
        let path = format!("bootstrap_extensions[{i}].typed_config");
        let Some(any) = &e.typed_config else {
            return Err(err("bootstrap", path, "typed_config is required"));
        };
        match super::istio::config_type(any).as_deref() {
            Some(INTERNAL_LISTENER) => {}
            other => {
                return Err(err(
                    "bootstrap",
                    path,
                    format!(
                        "bootstrap extension '{}' of type {} is not implemented",
                        e.name,
                        other.unwrap_or("?")
                    ),
                ))
            }
        }
    }
    Ok(())
}

const DOWNSTREAM_CONNECTIONS: &str =
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

/// `overload_manager`: the global downstream connection limit, the one resource monitor
/// Ringside implements; any other monitor is refused by type, overload actions by name.
fn overload(
    om: &crate::proto::envoy::config::overload::v3::OverloadManager,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Arc<crate::model::overload::GlobalConnLimit>>, ConvertError> {
    use crate::proto::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
    if om.refresh_interval.is_some() {
        ctx.ignored.push("overload_manager.refresh_interval".into());
    }
    let mut limit = None;
    for (i, m) in om.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}].typed_config");
        use crate::proto::envoy::config::overload::v3::resource_monitor::ConfigType;
        let Some(ConfigType::TypedConfig(any)) = &m.config_type else {
            return Err(err("bootstrap", path, "typed_config is required"));
        };
        if any_type(any) != DOWNSTREAM_CONNECTIONS {
            return Err(err(
                "bootstrap",
                path,
                format!(
                    "resource monitor '{}' of type {} is not implemented (only envoy.resource_monitors.global_downstream_max_connections)",
                    m.name,
                    any_type(any)
                ),
            ));
        }
        let c: DownstreamConnectionsConfig =
            decode_any(any, DOWNSTREAM_CONNECTIONS, "bootstrap", &path)?;
        if c.max_active_downstream_connections <= 0 {
            return Err(err(
                "bootstrap",
                format!("{path}.max_active_downstream_connections"),
                "must be greater than 0",
            ));
        }
        limit = Some(Arc::new(crate::model::overload::GlobalConnLimit::new(
            c.max_active_downstream_connections as u64,
        )));
    }
    Ok(limit)
}

/// How Ringside reaches its control plane, from `dynamic_resources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsConfig {
    /// Incremental (`DELTA_GRPC`) or state of the world (`GRPC`).
    pub delta: bool,
    /// The static cluster that leads to the server.
    pub cluster: String,
    pub set_node_on_first_message_only: bool,
    /// `initial_metadata` sent with the stream.
    pub metadata: Vec<(String, String)>,
    /// Initial fetch timeouts of LDS and CDS (`None`: wait for ever).
    pub lds_timeout: Option<Duration>,
    pub cds_timeout: Option<Duration>,
    pub lds: bool,
    pub cds: bool,
}

const DR: &str = "dynamic_resources";

/// Validates `dynamic_resources`; the parts Ringside runs are returned by [`ads_config`].
fn validate_dynamic_resources(
    dr: &crate::proto::envoy::config::bootstrap::v3::bootstrap::DynamicResources,
) -> Result<(), ConvertError> {
    ads_config(dr).map(|_| ())
}

/// The ADS client's configuration, if the bootstrap has one.
pub fn ads_config(
    dr: &crate::proto::envoy::config::bootstrap::v3::bootstrap::DynamicResources,
) -> Result<Option<AdsConfig>, ConvertError> {
    use crate::proto::envoy::config::core::v3::api_config_source::ApiType;
    let Some(ads) = &dr.ads_config else {
        if dr.lds_config.is_some() || dr.cds_config.is_some() {
            return Err(err(
                DR,
                format!("{DR}.ads_config"),
                "lds_config/cds_config need ads_config: only ADS is supported",
            ));
        }
        return Ok(None);
    };
    let p = format!("{DR}.ads_config");
    let delta = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        _ => {
            return Err(err(
                DR,
                format!("{p}.api_type"),
                "only GRPC and DELTA_GRPC are supported",
            ))
        }
    };
    if ads.transport_api_version == core::ApiVersion::V2 as i32 {
        return Err(err(
            DR,
            format!("{p}.transport_api_version"),
            "only V3 is supported",
        ));
    }
    let svc = match ads.grpc_services.as_slice() {
        [svc] => svc,
        _ => {
            return Err(err(
                DR,
                format!("{p}.grpc_services"),
                "exactly one grpc service is required",
            ))
        }
    };
    let Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(eg)) = &svc.target_specifier else {
        return Err(err(
            DR,
            format!("{p}.grpc_services[0].envoy_grpc"),
            "envoy_grpc is required",
        ));
    };
    if eg.cluster_name.is_empty() {
        return Err(err(
            DR,
            format!("{p}.grpc_services[0].envoy_grpc.cluster_name"),
            "cluster_name is required",
        ));
    }
    let metadata = svc
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    let lds_timeout = match &dr.lds_config {
        Some(_) => config_source(
            dr.lds_config.as_ref(),
            true,
            DR,
            &format!("{DR}.lds_config"),
        )?,
        None => None,
    };
    let cds_timeout = match &dr.cds_config {
        Some(_) => config_source(
            dr.cds_config.as_ref(),
            true,
            DR,
            &format!("{DR}.cds_config"),
        )?,
        None => None,
    };
    Ok(Some(AdsConfig {
        delta,
        cluster: eg.cluster_name.clone(),
        set_node_on_first_message_only: ads.set_node_on_first_message_only,
        metadata,
        lds_timeout,
        cds_timeout,
        lds: dr.lds_config.is_some(),
        cds: dr.cds_config.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_bootstrap, Source};

    fn build(yaml: &str) -> Result<Snapshot, ConvertError> {
        let b = parse_bootstrap(yaml, &Source::Inline).expect("parses");
        bootstrap_snapshot(&b, &Store::new(1), 1).map(|(s, _)| s)
    }

    fn with_routes(_: &str) -> String {
        "static_resources: {}".into()
    }

    #[test]
    fn bootstrap_extensions_overload_and_runtime_of_istios_bootstrap() {
        let ext = |type_url: &str| {
            format!(
                "bootstrap_extensions: [{{name: e, typed_config: {{'@type': type.googleapis.com/udpa.type.v1.TypedStruct, type_url: '{type_url}', value: {{buffer_size_kb: 64}}}}}}]\n{}",
                with_routes("")
            )
        };
        // Istio's internal listener registry is accepted (it has nothing to act on yet) ...
        assert!(build(&ext(
            "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
        ))
        .is_ok());
        // ... any other extension is refused by type.
        let e = build(&ext("type.googleapis.com/some.Other")).unwrap_err();
        assert!(e.to_string().contains("some.Other"), "{e}");
        // Overload: only the global connection limit monitor, with a positive limit.
        let om = |cfg: &str| {
            format!(
                "overload_manager: {{resource_monitors: [{{name: m, typed_config: {cfg}}}]}}\n{}",
                with_routes("")
            )
        };
        let s = build(&om("{'@type': type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig, max_active_downstream_connections: 5}")).unwrap();
        assert_eq!(s.global_cx.as_ref().map(|g| g.max), Some(5));
        let e = build(&om("{'@type': type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig, max_active_downstream_connections: 0}")).unwrap_err();
        assert!(
            e.to_string().contains("max_active_downstream_connections"),
            "{e}"
        );
        // The runtime: Istio's fragment key; disk layers refused by name.
        let rt = |layer: &str| {
            format!(
                "layered_runtime: {{layers: [{layer}]}}\n{}",
                with_routes("")
            )
        };
        let s = build(&rt("{name: g, static_layer: {envoy.reloadable_features.http_reject_path_with_fragment: false}}")).unwrap();
        assert!(!s.runtime.reject_path_with_fragment);
        let e = build(&rt("{name: d, disk_layer: {}}")).unwrap_err();
        assert!(e.to_string().contains("disk_layer"), "{e}");
    }
}
