//! A context's certificates: the validation context's trust bundle and SAN matchers, and
//! what the admin's `/certs` shows of its CA and its own certificate.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::model::tls::{CertDetails, SanMatcher, SanType};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::super::{data_source, err, ConvertError};

/// Where a certificate came from, as `/certs` names it: the file, else `<inline>`.
fn source_path(ds: Option<&core::DataSource>) -> Arc<str> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(core::data_source::Specifier::Filename(f)) => f.as_str().into(),
        _ => "<inline>".into(),
    }
}

/// A certificate's details; `None` when it does not parse (it was checked already).
fn details(path: Arc<str>, der: &[u8]) -> Option<CertDetails> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw = cert.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let serial = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    Some(CertDetails {
        path,
        serial,
        sans: crate::model::tls::subject_alt_names(der).unwrap_or_default(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The leaf of a context's certificate chain.
pub(super) fn leaf(
    c: &pb::TlsCertificate,
    loaded: Option<&(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Option<CertDetails> {
    let leaf = loaded?.0.first()?;
    details(source_path(c.certificate_chain.as_ref()), leaf)
}

/// The first certificate of a validation context's trust bundle.
pub(super) fn ca(vc: &pb::CertificateValidationContext) -> Option<CertDetails> {
    let ds = vc.trusted_ca.as_ref()?;
    let pem = data_source(ds, "", "").ok()?;
    let first = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    details(source_path(Some(ds)), &first)
}

/// The trusted CA and SAN matchers of a validation context.
pub(super) fn validation_context(
    vc: &pb::CertificateValidationContext,
    res: &str,
    vpath: &str,
) -> Result<Option<(RootCertStore, Vec<SanMatcher>)>, ConvertError> {
    if vc.allow_expired_certificate {
        return Err(err(
            res,
            format!("{vpath}.allow_expired_certificate"),
            "accepting expired certificates is not implemented",
        ));
    }
    if vc.trust_chain_verification != 0 {
        return Err(err(
            res,
            format!("{vpath}.trust_chain_verification"),
            "only VERIFY_TRUST_CHAIN is implemented",
        ));
    }
    let Some(ca) = &vc.trusted_ca else {
        return Err(err(
            res,
            format!("{vpath}.trusted_ca"),
            "peer certificates can only be checked against a trusted_ca",
        ));
    };
    let tp = format!("{vpath}.trusted_ca");
    let pem = data_source(ca, res, &tp)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(res, &tp, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(res, &tp, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err(res, tp, "no CA certificate in the PEM data"));
    }
    let mut sans = Vec::new();
    const ALL: &[SanType] = &[
        SanType::Dns,
        SanType::Uri,
        SanType::Email,
        SanType::IpAddress,
    ];
    for (i, m) in vc.match_subject_alt_names.iter().enumerate() {
        let matcher = super::super::matchers::string_matcher(
            m,
            res,
            &format!("{vpath}.match_subject_alt_names[{i}]"),
        )?;
        sans.push(SanMatcher {
            types: ALL,
            matcher,
        });
    }
    for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let mp = format!("{vpath}.match_typed_subject_alt_names[{i}]");
        use pb::subject_alt_name_matcher::SanType as T;
        let types: &'static [SanType] = match T::try_from(m.san_type) {
            Ok(T::Dns) => &[SanType::Dns],
            Ok(T::Uri) => &[SanType::Uri],
            Ok(T::Email) => &[SanType::Email],
            Ok(T::IpAddress) => &[SanType::IpAddress],
            Ok(T::OtherName) => {
                return Err(err(
                    res,
                    format!("{mp}.san_type"),
                    "OTHER_NAME is not implemented",
                ))
            }
            _ => return Err(err(res, format!("{mp}.san_type"), "a SAN type is required")),
        };
        let Some(sm) = &m.matcher else {
            return Err(err(res, format!("{mp}.matcher"), "a matcher is required"));
        };
        let matcher = super::super::matchers::string_matcher(sm, res, &format!("{mp}.matcher"))?;
        sans.push(SanMatcher { types, matcher });
    }
    Ok(Some((roots, sans)))
}
