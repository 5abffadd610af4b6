//! Matchers and header mutations shared by routes and filters: `HeaderMatcher`,
//! `StringMatcher`, regexes, `request/response_headers_to_add/remove`.

use regex::Regex;

use crate::model::format::Format;
use crate::model::headers::{AppendAction, HeaderAdd, HeaderMods};
use crate::model::route::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::config::route::v3 as pb;
use crate::proto::envoy::r#type::matcher::v3 as matcher;

use super::{err, ConvertError};

pub(crate) fn header_match(
    h: &pb::HeaderMatcher,
    res: &str,
    hp: &str,
) -> Result<HeaderMatch, ConvertError> {
    if h.name.is_empty() {
        return Err(err(res, format!("{hp}.name"), "name is required"));
    }
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let sm = |pattern: StringMatch| {
        HeaderMatchKind::String(StringMatcher {
            pattern,
            ignore_case: false,
        })
    };
    let kind = match &h.header_match_specifier {
        None => HeaderMatchKind::Present(true),
        Some(H::PresentMatch(b)) => HeaderMatchKind::Present(*b),
        Some(H::ExactMatch(s)) => sm(StringMatch::Exact(s.clone())),
        Some(H::PrefixMatch(s)) => sm(StringMatch::Prefix(s.clone())),
        Some(H::SuffixMatch(s)) => sm(StringMatch::Suffix(s.clone())),
        Some(H::ContainsMatch(s)) => sm(StringMatch::Contains(s.clone())),
        Some(H::SafeRegexMatch(re)) => sm(StringMatch::Regex(regex(
            re,
            res,
            &format!("{hp}.safe_regex_match"),
            false,
        )?)),
        Some(H::StringMatch(s)) => {
            HeaderMatchKind::String(string_matcher(s, res, &format!("{hp}.string_match"))?)
        }
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

pub(crate) fn string_matcher(
    s: &matcher::StringMatcher,
    res: &str,
    sp: &str,
) -> Result<StringMatcher, ConvertError> {
    use matcher::string_matcher::MatchPattern as M;
    let pattern = match &s.match_pattern {
        Some(M::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(M::Prefix(v)) if !v.is_empty() => StringMatch::Prefix(v.clone()),
        Some(M::Suffix(v)) if !v.is_empty() => StringMatch::Suffix(v.clone()),
        Some(M::Contains(v)) if !v.is_empty() => StringMatch::Contains(v.clone()),
        Some(M::SafeRegex(re)) => {
            StringMatch::Regex(regex(re, res, &format!("{sp}.safe_regex"), s.ignore_case)?)
        }
        Some(_) => return Err(err(res, sp, "the pattern must not be empty")),
        None => return Err(err(res, sp, "a match pattern is required")),
    };
    Ok(StringMatcher {
        pattern,
        ignore_case: s.ignore_case,
    })
}

pub(super) fn regex(
    re: &matcher::RegexMatcher,
    res: &str,
    rp: &str,
    ignore_case: bool,
) -> Result<Regex, ConvertError> {
    // RE2 semantics in Envoy: the whole value must match.
    regex::RegexBuilder::new(&format!("^(?:{})$", re.regex))
        .case_insensitive(ignore_case)
        .build()
        .map_err(|e| err(res, format!("{rp}.regex"), format!("invalid regex: {e}")))
}

pub(super) fn regex_substitute(
    rr: &matcher::RegexMatchAndSubstitute,
    res: &str,
    rp: &str,
) -> Result<(Regex, String), ConvertError> {
    let Some(pattern) = &rr.pattern else {
        return Err(err(res, format!("{rp}.pattern"), "pattern is required"));
    };
    let re = Regex::new(&pattern.regex).map_err(|e| {
        err(
            res,
            format!("{rp}.pattern.regex"),
            format!("invalid regex: {e}"),
        )
    })?;
    // RE2's \1 becomes the regex crate's ${1}.
    let mut sub = String::with_capacity(rr.substitution.len());
    let mut chars = rr.substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                sub.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => sub.push_str("$$"),
            _ => sub.push(c),
        }
    }
    Ok((re, sub))
}

pub(crate) fn header_mods(
    add: &[core::HeaderValueOption],
    remove: &[String],
    res: &str,
    path: &str,
    side: &str,
) -> Result<HeaderMods, ConvertError> {
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for (i, hvo) in add.iter().enumerate() {
        let hp = match side {
            "" => format!("{path}.headers_to_add[{i}]"),
            _ => format!("{path}.{side}_headers_to_add[{i}]"),
        };
        let Some(h) = &hvo.header else {
            return Err(err(res, format!("{hp}.header"), "header is required"));
        };
        let name = h.key.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':' || name.starts_with(':'))
        {
            return Err(err(
                res,
                format!("{hp}.header.key"),
                format!("'{}' is not a valid header name", h.key),
            ));
        }
        if name.starts_with(':') || name == "host" {
            return Err(err(
                res,
                format!("{hp}.header.key"),
                format!("'{}' cannot be modified here", h.key),
            ));
        }
        let raw = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| err(res, format!("{hp}.header.raw_value"), "not UTF-8"))?
        };
        if raw.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(err(
                res,
                format!("{hp}.header.value"),
                "header values must not contain CR, LF or NUL",
            ));
        }
        let value = Format::parse(&raw).map_err(|e| err(res, format!("{hp}.header.value"), e))?;
        use core::header_value_option::HeaderAppendAction as H;
        let action = match (hvo.append, H::try_from(hvo.append_action)) {
            (Some(_), Ok(a)) if a != H::AppendIfExistsOrAdd => {
                return Err(err(
                    res,
                    format!("{hp}.append"),
                    "append and append_action are exclusive",
                ))
            }
            (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
            (_, Ok(H::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
            (_, Ok(H::AddIfAbsent)) => AppendAction::AddIfAbsent,
            (_, Ok(H::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
            (_, Ok(H::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
            (_, Err(_)) => return Err(err(res, format!("{hp}.append_action"), "unknown value")),
        };
        adds.push(HeaderAdd {
            name: name.into(),
            value,
            action,
            keep_empty: hvo.keep_empty_value,
        });
    }
    for (i, r) in remove.iter().enumerate() {
        let name = r.to_ascii_lowercase();
        if name.starts_with(':') || name == "host" {
            return Err(err(
                res,
                format!("{path}.{side}_headers_to_remove[{i}]"),
                format!("'{r}' cannot be removed"),
            ));
        }
        removes.push(name.into());
    }
    Ok(HeaderMods::new(adds, removes))
}

/// A `RouteMatch`'s conditions: path, case sensitivity, headers and query parameters
/// (routes, and `jwt_authn`'s rules).
pub(super) fn request_match(
    m: &pb::RouteMatch,
    res: &str,
    rp: &str,
) -> Result<
    (
        PathMatch,
        bool,
        Vec<crate::model::matcher::HeaderMatch>,
        Vec<QueryMatch>,
    ),
    ConvertError,
> {
    use pb::route_match::PathSpecifier as PS;
    let path =
        match &m.path_specifier {
            Some(PS::Prefix(s)) => PathMatch::Prefix(s.clone()),
            Some(PS::Path(s)) => PathMatch::Exact(s.clone()),
            Some(PS::PathSeparatedPrefix(s)) => {
                if s.contains(['?', '#']) || s.ends_with('/') {
                    return Err(err(
                        res,
                        format!("{rp}.match.path_separated_prefix"),
                        "must not contain ? or # nor end with /",
                    ));
                }
                PathMatch::Separated(s.clone())
            }
            Some(PS::SafeRegex(re)) => PathMatch::Regex(regex(
                re,
                res,
                &format!("{rp}.match.safe_regex"),
                !m.case_sensitive.unwrap_or(true),
            )?),
            Some(PS::ConnectMatcher(_)) => PathMatch::Connect,
            None => return Err(err(
                res,
                format!("{rp}.match"),
                "a path specifier (prefix, path, safe_regex, path_separated_prefix, connect_matcher) is required",
            )),
        };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (hi, h) in m.headers.iter().enumerate() {
        headers.push(header_match(h, res, &format!("{rp}.match.headers[{hi}]"))?);
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for (qi, q) in m.query_parameters.iter().enumerate() {
        let qp = format!("{rp}.match.query_parameters[{qi}]");
        use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let value = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => Some(string_matcher(s, res, &format!("{qp}.string_match"))?),
            Some(Q::PresentMatch(true)) | None => None,
            Some(Q::PresentMatch(false)) => {
                return Err(err(
                    res,
                    format!("{qp}.present_match"),
                    "present_match: false is not supported",
                ))
            }
        };
        if q.name.is_empty() {
            return Err(err(res, format!("{qp}.name"), "name is required"));
        }
        query.push(QueryMatch {
            name: q.name.clone(),
            value,
        });
    }
    Ok((path, m.case_sensitive.unwrap_or(true), headers, query))
}
