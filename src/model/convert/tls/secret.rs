//! Certificates and trust bundles from SDS secrets (over ADS, an SDS stream or a file)
//! and the checks a received secret must pass.

use super::*;

/// Looks up the SDS secret `sds` names, recording the reference (so the control thread
/// subscribes to it and re-converts the resource when it changes). `None` while it has
/// not arrived.
pub(super) fn secret(
    sds: &pb::SdsSecretConfig,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
    out: &mut Common,
) -> Result<Option<Arc<pb::Secret>>, ConvertError> {
    if sds.name.is_empty() {
        return Err(err(res, format!("{at}.name"), "a secret name is required"));
    }
    let source = sds_source(
        sds.sds_config.as_ref(),
        res,
        &format!("{at}.sds_config"),
        ctx,
    )?;
    let name: Arc<str> = sds.name.as_str().into();
    ctx.secret_refs.insert((name.clone(), source.clone()));
    if let SdsSource::File(file) = &source {
        return file_secret(file, &name, res, &format!("{at}.sds_config"), ctx, out).map(Some);
    }
    match ctx.secrets.get(&name) {
        Some(s) => {
            use prost::Message;
            out.secrets_used.push(s.encode_to_vec());
            Ok(Some(s.clone()))
        }
        None => {
            out.missing.get_or_insert(name);
            Ok(None)
        }
    }
}

/// Secret `name` from SDS file `file`, read now (the control thread watches the file and
/// converts again when it changes); a missing file, a bad secret or one the file lacks is
/// an error naming the file.
pub(super) fn file_secret(
    file: &str,
    name: &str,
    res: &str,
    at: &str,
    ctx: &Ctx<'_>,
    out: &mut Common,
) -> Result<Arc<pb::Secret>, ConvertError> {
    use prost::Message;
    let Some(read) = ctx.sds_files else {
        return Err(err(res, at, "SDS files cannot be read here"));
    };
    let secrets = read(std::path::Path::new(file)).map_err(|e| err(res, at, e))?;
    let Some(secret) = secrets.into_iter().find(|s| s.name == name) else {
        return Err(err(
            res,
            at,
            format!("{file} holds no secret named '{name}'"),
        ));
    };
    check_secret(&secret).map_err(|e| err(res, at, format!("{file}: {e}")))?;
    out.secrets_used.push(secret.encode_to_vec());
    Ok(Arc::new(secret))
}

/// An SDS config source: `ads: {}`, a gRPC `api_config_source` naming a static cluster
/// (Istio's `sds-grpc`, pilot-agent's Unix socket), or a file (`path_config_source`).
pub(super) fn sds_source(
    cs: Option<&core::ConfigSource>,
    res: &str,
    at: &str,
    ctx: &Ctx<'_>,
) -> Result<SdsSource, ConvertError> {
    use crate::proto::envoy::config::core::v3::api_config_source::ApiType;
    use crate::proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
    let Some(cs) = cs else {
        return Err(err(
            res,
            at,
            "sds_config is required (secrets in static_resources are not implemented)",
        ));
    };
    match &cs.config_source_specifier {
        Some(S::Ads(_)) => {
            if !ctx.ads {
                return Err(err(
                    res,
                    format!("{at}.ads"),
                    "the bootstrap has no dynamic_resources.ads_config",
                ));
            }
            Ok(SdsSource::Ads)
        }
        Some(S::ApiConfigSource(api)) => {
            if api.api_type != ApiType::Grpc as i32 {
                return Err(err(
                    res,
                    format!("{at}.api_config_source.api_type"),
                    "SDS servers are reached over GRPC (state of the world), as pilot-agent serves them",
                ));
            }
            let cluster = match api.grpc_services.as_slice() {
                [one] => match &one.target_specifier {
                    Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(g)) => {
                        g.cluster_name.clone()
                    }
                    _ => String::new(),
                },
                _ => String::new(),
            };
            if cluster.is_empty() {
                return Err(err(
                    res,
                    format!("{at}.api_config_source.grpc_services"),
                    "exactly one grpc_services entry with envoy_grpc.cluster_name is required",
                ));
            }
            Ok(SdsSource::Grpc(cluster.as_str().into()))
        }
        // Envoy reloads when a file is moved into `watched_directory`; Ringside watches
        // the file itself, which sees those moves and in-place writes alike.
        Some(S::PathConfigSource(p)) if !p.path.is_empty() => {
            Ok(SdsSource::File(p.path.as_str().into()))
        }
        Some(S::Path(p)) if !p.is_empty() => Ok(SdsSource::File(p.as_str().into())),
        Some(S::Path(_) | S::PathConfigSource(_)) => Err(err(
            res,
            format!("{at}.path_config_source.path"),
            "a file path is required",
        )),
        None => Err(err(res, at, "ads or api_config_source is required")),
    }
}

/// Validates a secret as it arrives over SDS (so a bad one is NACKed before anything uses
/// it): a certificate chain with its key, or a trust bundle.
pub fn check_secret(secret: &pb::Secret) -> Result<(), ConvertError> {
    let res = format!("secret '{}'", secret.name);
    if secret.name.is_empty() {
        return Err(err("secret ''", "name", "a secret name is required"));
    }
    match &secret.r#type {
        Some(pb::secret::Type::TlsCertificate(tc)) => {
            let (chain, key) = certificate(tc, &res, "tls_certificate")?;
            let provider = provider::default_provider();
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| err(&res, "tls_certificate.private_key", e.to_string()))?;
            rustls::sign::CertifiedKey::new(chain, signing)
                .keys_match()
                .map_err(|e| {
                    err(
                        &res,
                        "tls_certificate",
                        format!("the private key does not belong to the certificate: {e}"),
                    )
                })
        }
        Some(pb::secret::Type::ValidationContext(vc)) => {
            validation_context(vc, &res, "validation_context").map(|_| ())
        }
        None => Err(err(
            &res,
            "type",
            "tls_certificate or validation_context is required",
        )),
    }
}
