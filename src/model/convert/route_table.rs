//! A route table assembled virtual host by virtual host, so that a new version of a
//! route configuration can keep the virtual hosts whose encoding did not change (istiod
//! sends a sidecar one configuration with a virtual host per service, whole, for every
//! change to any of them).

use std::sync::Arc;

use crate::model::route::*;
use crate::proto::envoy::config::route::v3 as pb;

use super::matchers::header_mods;
use super::route::{route, VhostDefaults};
use super::{err, ConvertError, Ctx};

/// A whole `RouteConfiguration` (inline, bootstrap) → [`RouteTable`].
pub(crate) fn convert(
    rc: &pb::RouteConfiguration,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<RouteTable, ConvertError> {
    let mut b = TableBuilder::new(rc, res, path, ctx)?;
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let v = b.virtual_host(vh, vi, ctx)?;
        b.push(Arc::new(v), vi)?;
    }
    Ok(b.finish())
}

/// A route table being built: what the route configuration gives every virtual host,
/// then its virtual hosts one by one (converted here, or kept from the configuration's
/// previous version when their encoding did not change: see `xds::state::routes`).
pub(crate) struct TableBuilder {
    table: RouteTable,
    rc_mirrors: Arc<[Mirror]>,
    validate_clusters: bool,
    max_body: usize,
    res: String,
    path: String,
}

impl TableBuilder {
    /// The configuration's own fields (its `virtual_hosts` are not read).
    pub(crate) fn new(
        rc: &pb::RouteConfiguration,
        res: &str,
        path: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<TableBuilder, ConvertError> {
        // Envoy: validated by default only when the configuration is static (bootstrap).
        let validate_clusters = rc.validate_clusters.unwrap_or(!ctx.dynamic);
        let table = RouteTable {
            any_per_filter: false,
            source: None,
            name: rc.name.as_str().into(),
            virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
            exact: Default::default(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            default: None,
            ignore_port: rc.ignore_port_in_host_matching,
            per_filter: super::http_filter::per_filter_configs(
                &rc.typed_per_filter_config,
                res,
                path,
                ctx,
            )?,
            headers: header_mods(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                res,
                path,
                "request",
            )?,
            response_headers: header_mods(
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
                res,
                path,
                "response",
            )?,
        };
        let rc_mirrors = super::mirror::policies(
            &rc.request_mirror_policies,
            res,
            &format!("{path}.request_mirror_policies"),
            validate_clusters,
            ctx,
        )?;
        Ok(TableBuilder {
            table,
            rc_mirrors,
            validate_clusters,
            max_body: rc.max_direct_response_body_size_bytes.unwrap_or(4096) as usize,
            res: res.to_string(),
            path: path.to_string(),
        })
    }

    /// Room for `n` virtual hosts (their count is known before their contents).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.table.virtual_hosts.reserve(n);
    }

    /// The virtual host at `vi`: checked and converted.
    pub(crate) fn virtual_host(
        &self,
        vh: &pb::VirtualHost,
        vi: usize,
        ctx: &mut Ctx<'_>,
    ) -> Result<VirtualHost, ConvertError> {
        let res = self.res.as_str();
        let vp = format!("{}.virtual_hosts[{vi}]", self.path);
        if vh.domains.is_empty() {
            return Err(err(
                res,
                format!("{vp}.domains"),
                "at least one domain is required",
            ));
        }
        let mut domains = Vec::with_capacity(vh.domains.len());
        for (di, d) in vh.domains.iter().enumerate() {
            let d = d.to_ascii_lowercase();
            let inner = d.strip_prefix('*').unwrap_or(&d);
            let inner = inner.strip_suffix('*').unwrap_or(inner);
            if d != "*" && inner.contains('*') {
                return Err(err(
                    res,
                    format!("{vp}.domains[{di}]"),
                    "a wildcard must be the first or last character",
                ));
            }
            domains.push(d);
        }
        let domains = Domains::new(&domains)
            .ok_or_else(|| err(res, format!("{vp}.domains"), "4 GiB of domains or more"))?;
        let vh_retry = match &vh.retry_policy {
            Some(p) => Some(ctx.retry_policy(p, res, &format!("{vp}.retry_policy"))?),
            None => None,
        };
        let vh_mirrors = match vh.request_mirror_policies.is_empty() {
            true => self.rc_mirrors.clone(),
            false => super::mirror::policies(
                &vh.request_mirror_policies,
                res,
                &format!("{vp}.request_mirror_policies"),
                self.validate_clusters,
                ctx,
            )?,
        };
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (ri, r) in vh.routes.iter().enumerate() {
            let rp = format!("{vp}.routes[{ri}]");
            let attempts = (
                vh.include_request_attempt_count,
                vh.include_attempt_count_in_response,
            );
            routes.push(route(
                r,
                res,
                &rp,
                self.validate_clusters,
                self.max_body,
                VhostDefaults {
                    attempt_count: attempts,
                    retry: vh_retry.as_ref(),
                    mirrors: &vh_mirrors,
                },
                ctx,
            )?);
        }
        use pb::virtual_host::TlsRequirementType as T;
        let require_tls = match T::try_from(vh.require_tls) {
            Ok(T::None) => TlsRequirement::None,
            Ok(T::ExternalOnly) => TlsRequirement::ExternalOnly,
            Ok(T::All) => TlsRequirement::All,
            Err(_) => return Err(err(res, format!("{vp}.require_tls"), "unknown value")),
        };
        let index =
            (routes.len() >= PathIndex::MIN_ROUTES).then(|| Box::new(PathIndex::build(&routes)));
        let per_filter =
            super::http_filter::per_filter_configs(&vh.typed_per_filter_config, res, &vp, ctx)?;
        Ok(VirtualHost {
            name: vh.name.as_str().into(),
            domains,
            routes,
            index,
            require_tls,
            per_filter,
            headers: header_mods(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                res,
                &vp,
                "request",
            )?,
            response_headers: header_mods(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                res,
                &vp,
                "response",
            )?,
        })
    }

    /// Adds the virtual host at `vi`: its domains join the table's (each once).
    pub(crate) fn push(&mut self, vh: Arc<VirtualHost>, vi: usize) -> Result<(), ConvertError> {
        let table = &mut self.table;
        if table.exact.is_empty() {
            // Most virtual hosts have as many domains as the first (istiod's: 8-10).
            let expect = vh.domains.len() * table.virtual_hosts.capacity().max(1);
            table.exact.reserve(expect, &table.virtual_hosts);
        }
        let at = table.virtual_hosts.len();
        table.virtual_hosts.push(vh);
        self.index(at, vi)
    }

    /// Starts from `old`'s virtual hosts and domains, for a version of the configuration
    /// with the same fields of its own and as many virtual hosts: [`TableBuilder::replace`]
    /// then puts in the ones that changed. A one-route change in a big mesh so touches one
    /// virtual host's domains instead of indexing all of them again (100,000 at 10,000
    /// services).
    pub(crate) fn reuse(&mut self, old: &RouteTable) {
        let t = &mut self.table;
        t.virtual_hosts.clone_from(&old.virtual_hosts);
        t.exact = old.exact.clone();
        t.suffixes.clone_from(&old.suffixes);
        t.prefixes.clone_from(&old.prefixes);
        t.default = old.default;
    }

    /// Puts `vh` at `vi` in place of the virtual host there, and its domains in place of
    /// that one's.
    pub(crate) fn replace(&mut self, vh: Arc<VirtualHost>, vi: usize) -> Result<(), ConvertError> {
        let t = &mut self.table;
        for di in 0..t.virtual_hosts[vi].domains.len() {
            t.exact.remove(&t.virtual_hosts, vi, di);
        }
        t.suffixes.retain(|(_, i)| *i != vi);
        t.prefixes.retain(|(_, i)| *i != vi);
        if t.default == Some(vi) {
            t.default = None;
        }
        t.virtual_hosts[vi] = vh;
        self.index(vi, vi)
    }

    /// Indexes the domains of the table's virtual host `at` (`vi` in the configuration,
    /// for errors).
    fn index(&mut self, at: usize, vi: usize) -> Result<(), ConvertError> {
        let table = &mut self.table;
        let vh = &table.virtual_hosts[at];
        for (di, d) in vh.domains.iter().enumerate() {
            let taken = if d == "*" {
                table.default.replace(at).is_some()
            } else if let Some(s) = d.strip_prefix('*') {
                let taken = table.suffixes.iter().any(|(x, _)| x == s);
                table.suffixes.push((s.to_string(), at));
                taken
            } else if let Some(s) = d.strip_suffix('*') {
                let taken = table.prefixes.iter().any(|(x, _)| x == s);
                table.prefixes.push((s.to_string(), at));
                taken
            } else {
                !table.exact.insert(&table.virtual_hosts, at, di)
            };
            if taken {
                return Err(err(
                    &self.res,
                    format!("{}.virtual_hosts[{vi}].domains[{di}]", self.path),
                    format!("domain '{d}' is already used by another virtual host"),
                ));
            }
        }
        Ok(())
    }

    /// The table, its wildcards ordered longest first.
    /// As [`finish`](Self::finish), for a table converted from an encoding with these
    /// digests.
    pub(crate) fn finish_from(self, source: crate::model::route::SourceDigests) -> RouteTable {
        let mut table = self.finish();
        table.source = Some(source);
        table
    }

    pub(crate) fn finish(self) -> RouteTable {
        let mut table = self.table;
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table.prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table.any_per_filter = !table.per_filter.is_empty()
            || table.virtual_hosts.iter().any(|v| {
                !v.per_filter.is_empty()
                    || v.routes.iter().any(|r| {
                        !r.per_filter.is_empty()
                            || matches!(&r.action, Action::Forward(f) if matches!(
                                &f.target,
                                Target::Weighted { targets, .. } if targets.iter().any(|t| !t.per_filter.is_empty())
                            ))
                    })
            });
        table
    }
}
