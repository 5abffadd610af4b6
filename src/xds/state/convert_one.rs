//! One resource of a response: decoded, checked for fields Ringside does not implement,
//! and converted into what the caches hold.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;

use super::{Held, Incoming, Kind};
use crate::model::convert::{self, ConvertError, Ctx};
use crate::model::route::RouteTable;
use crate::model::{Cluster, Dictionary, DumpEntry, Encoded, Endpoint, Entry, Listener};
use crate::proto::envoy::config::cluster::v3::Cluster as PbCluster;
use crate::proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::proto::envoy::config::listener::v3::Listener as PbListener;
use crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret as PbSecret;

/// Every resource type has its name in field 1 (`ClusterLoadAssignment.cluster_name`
/// included): read alone, before conversion, to find duplicates and to keep a refused
/// resource's previous version.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// The resource's name: the delta envelope's, or field 1 of the resource itself.
pub(crate) fn resource_name(inc: &Incoming) -> Option<Arc<str>> {
    if !inc.name.is_empty() {
        return Some(inc.name.as_str().into());
    }
    let n = Named::decode(inc.resource.value.as_slice()).ok()?;
    (!n.name.is_empty()).then(|| n.name.as_str().into())
}

pub(super) enum AnyHeld {
    Cluster(Held<Arc<Cluster>>),
    Listener(Held<Arc<Listener>>),
    Route(Held<Arc<RouteTable>>),
    Endpoint(Held<Arc<[Endpoint]>>),
    Secret(Held<Arc<PbSecret>>),
}

/// A response needs this many resources of a type to make that type's dictionary.
const MANY: usize = 256;

/// The dictionary `update`'s encodings are compressed against (see [`Encoded`]): for
/// clusters, load assignments and listeners, one of the resources of the first response
/// bringing [`MANY`] of that type (istiod sends a type's resources alike, and orders them
/// by name: the one in the middle is one service's, where the first may be a
/// passthrough's). Below that many, a dictionary would cost more than it saves.
pub(super) fn dictionary(
    dicts: &mut std::collections::BTreeMap<Kind, Arc<Dictionary>>,
    update: &super::Update,
) -> Option<Arc<Dictionary>> {
    if !matches!(update.kind, Kind::Cluster | Kind::Endpoint | Kind::Listener) {
        return None;
    }
    if let Some(d) = dicts.get(&update.kind) {
        return Some(d.clone());
    }
    let rs = &update.resources;
    if rs.len() < MANY {
        return None;
    }
    let d = Arc::new(Dictionary::new(&rs[rs.len() / 2].resource.value));
    dicts.insert(update.kind, d.clone());
    Some(d)
}

/// What the resources of one response share.
pub(super) struct Batch {
    /// When it arrived.
    pub now: (Instant, SystemTime),
    /// The dictionary its encodings are compressed against ([`dictionary`]).
    pub dict: Option<Arc<Dictionary>>,
    /// The last resource's version: the next one of the same version shares it (istiod
    /// gives a response's resources one version).
    pub version: Option<Arc<str>>,
}

impl Batch {
    fn version(&mut self, v: &str) -> Arc<str> {
        match &self.version {
            Some(last) if **last == *v => last.clone(),
            _ => self.version.insert(v.into()).clone(),
        }
    }
}

/// Decodes, checks for fields Ringside does not implement, and converts one resource;
/// its encoding is held compressed against the batch's dictionary.
pub(super) fn convert_one(
    kind: Kind,
    inc: &Incoming,
    name: Option<&str>,
    previous_route: Option<&RouteTable>,
    batch: &mut Batch,
    ctx: &mut Ctx<'_>,
) -> Result<(Arc<str>, AnyHeld), ConvertError> {
    let (now, wall) = batch.now;
    let what = match name {
        None => kind.short().to_string(),
        Some(n) => format!("{} '{n}'", kind.noun()),
    };
    if inc.resource.type_url != kind.type_url() {
        return Err(convert::err(
            &what,
            "",
            format!(
                "resource of type {} in a {} response",
                inc.resource.type_url,
                kind.type_url()
            ),
        ));
    }
    let bytes = inc.resource.value.as_slice();
    let decode_err = |e: prost::DecodeError| {
        convert::err(&what, "", format!("cannot decode {}: {e}", kind.message()))
    };
    // A route configuration is checked virtual host by virtual host (super::routes).
    if kind != Kind::Route {
        crate::xds::unknown::check(kind.message(), bytes)
            .map_err(|(path, reason)| convert::err(&what, path, reason))?;
    }
    // The name is the map key's too (one string, not one per holder).
    let version = batch.version(&inc.version);
    let dict = batch.dict.as_ref();
    let entry = |name: &Arc<str>| {
        DumpEntry::new(Entry {
            name: name.clone(),
            version,
            last_updated: wall,
            resource: match kind {
                // Secrets are small, and dumped redacted.
                Kind::Secret => Encoded::raw(kind.type_url(), bytes.to_vec()),
                _ => Encoded::pack(kind.type_url(), bytes, dict),
            },
        })
    };
    let (name, out): (Arc<str>, AnyHeld) = match kind {
        Kind::Cluster => {
            let pb = PbCluster::decode(bytes).map_err(decode_err)?;
            let fetch_timeout = pb
                .eds_cluster_config
                .as_ref()
                .and_then(|e| e.eds_config.as_ref())
                .and_then(fetch_timeout);
            let c = Arc::new(convert::cluster_resource(&pb, ctx)?);
            let name = c.name.clone();
            let h = Held::new(entry(&name), c, now, fetch_timeout, ctx);
            (name, AnyHeld::Cluster(h))
        }
        Kind::Listener => {
            let pb = PbListener::decode(bytes).map_err(decode_err)?;
            let l = Arc::new(convert::listener_resource(&pb, ctx)?);
            // The RDS config source's initial fetch timeout, 15 s by default.
            let fetch_timeout = rds_fetch_timeout(&pb);
            let name = l.name.clone();
            let h = Held::new(entry(&name), l, now, fetch_timeout, ctx);
            (name, AnyHeld::Listener(h))
        }
        Kind::Route => {
            let t = Arc::new(super::routes::route_table(
                bytes,
                previous_route,
                &what,
                ctx,
            )?);
            let h = Held::new(entry(&t.name), t.clone(), now, None, ctx);
            (t.name.clone(), AnyHeld::Route(h))
        }
        Kind::Endpoint => {
            let pb = ClusterLoadAssignment::decode(bytes).map_err(decode_err)?;
            let eps: Arc<[Endpoint]> = convert::endpoints_resource(&pb)?.into();
            let name: Arc<str> = pb.cluster_name.as_str().into();
            let h = Held::new(entry(&name), eps, now, None, ctx);
            (name, AnyHeld::Endpoint(h))
        }
        Kind::Secret => {
            let pb = PbSecret::decode(bytes).map_err(decode_err)?;
            convert::check_secret(&pb)?;
            let name: Arc<str> = pb.name.as_str().into();
            let h = Held::new(entry(&name), Arc::new(pb), now, None, ctx);
            (name, AnyHeld::Secret(h))
        }
    };
    Ok((name, out))
}

/// A config source's `initial_fetch_timeout`: 15 s when unset, none (wait for ever) for 0.
pub(crate) fn fetch_timeout(
    cs: &crate::proto::envoy::config::core::v3::ConfigSource,
) -> Option<Duration> {
    match &cs.initial_fetch_timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.seconds <= 0 && d.nanos <= 0 => None,
        Some(d) => Some(Duration::new(d.seconds as u64, d.nanos.max(0) as u32)),
    }
}

fn rds_fetch_timeout(l: &PbListener) -> Option<Duration> {
    use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::RouteSpecifier, HttpConnectionManager,
    };
    let f = l.filter_chains.first()?.filters.first()?;
    let crate::proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any) =
        f.config_type.as_ref()?;
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
    match hcm.route_specifier? {
        RouteSpecifier::Rds(rds) => rds.config_source.as_ref().and_then(fetch_timeout),
        RouteSpecifier::RouteConfig(_) => None,
    }
}
