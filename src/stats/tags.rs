//! Envoy's tag extraction: a stat's full name (`cluster.backend.upstream_rq_200`) becomes a
//! tag-extracted name (`cluster.upstream_rq`) and tags (`envoy.response_code="200"`,
//! `envoy.cluster_name="backend"`), which the Prometheus exposition prints as labels.
//!
//! Extractors run as Envoy runs them: those whose regex names no first token, in the order
//! added, then those for the name's first token; each sees the original name and removes
//! its part of it; of extractors sharing a tag name, only the first that matches counts.
//! Envoy's built-in extractors are RE2 (group 1 removed, group 2 the value); configured
//! `stats_tags` regexes are ECMAScript (group 1 removed, group 2 or else group 1 the value).

use std::collections::HashMap;
use std::ops::Range;

/// How a tag's value is found.
enum Rule {
    /// A built-in regex, matched as RE2's `PartialMatch` with two capture arguments.
    Re2 {
        regex: regex::Regex,
        /// The name must contain it for the regex to run (Envoy's `substr`).
        substr: &'static str,
        /// A value equal to it is no tag (Envoy's negative match).
        negative: &'static str,
    },
    /// A configured regex, ECMAScript as Envoy compiles it.
    Std(fancy_regex::Regex),
    /// A dotted token pattern: `*` one token, `**` any number, `$` the value.
    Tokens(Vec<Token>),
    /// A fixed value on every stat.
    Fixed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    One,
    Any,
    Value,
}

struct Extractor {
    name: String,
    rule: Rule,
    /// Another extractor has the same tag name: the first to match wins.
    shared: bool,
}

/// A stat name split into Envoy's tag-extracted name and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub name: String,
    /// In extraction order, which is the label order Envoy prints.
    pub tags: Vec<(String, String)>,
}

/// Tag extraction's results by stat name, for at most [`TagCache::KEPT`] names. A big mesh
/// has hundreds of thousands of stat names (10,000 clusters: 560,000), and keeping every
/// name's tags held 650 MB after one `/stats/prometheus`; names past the bound have their
/// tags extracted on each read (about a microsecond each). Tags given with a name by
/// what made it (Istio's series, whose labels no extractor finds) are always kept.
#[derive(Default)]
pub struct TagCache {
    extracted: HashMap<String, std::sync::Arc<Tagged>>,
    given: HashMap<String, std::sync::Arc<Tagged>>,
}

impl TagCache {
    /// How many names' extracted tags are kept.
    pub const KEPT: usize = 16_384;

    /// `name`'s tags: those given for it, else as `producer` extracts them.
    pub fn get(&mut self, name: &str, producer: &TagProducer) -> std::sync::Arc<Tagged> {
        if let Some(t) = self.given.get(name).or_else(|| self.extracted.get(name)) {
            return t.clone();
        }
        let t = std::sync::Arc::new(producer.produce(name));
        if self.extracted.len() < Self::KEPT {
            self.extracted.insert(name.to_string(), t.clone());
        }
        t
    }

    /// Sets `name`'s tags, unless they are set already.
    pub fn give(&mut self, name: String, tagged: impl FnOnce() -> Tagged) {
        self.given
            .entry(name)
            .or_insert_with(|| std::sync::Arc::new(tagged()));
    }

    /// Forgets the extracted tags (the tag configuration changed).
    pub fn clear(&mut self) {
        self.extracted.clear();
    }

    /// How many names' extracted tags are kept.
    pub fn len(&self) -> usize {
        self.extracted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extracted.is_empty()
    }
}

/// One `stats_tags` entry.
pub struct TagSpec {
    pub name: String,
    pub value: TagValue,
}

/// Where a configured tag's value comes from.
pub enum TagValue {
    /// No regex: Envoy's built-in extractor(s) of that name.
    Default,
    Regex(String),
    Fixed(String),
}

/// Why a `stats_tags` entry was refused: its index and Envoy's message.
#[derive(Debug)]
pub struct TagError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// The extractors, indexed as Envoy indexes them.
pub struct TagProducer {
    extractors: Vec<Extractor>,
    without_prefix: Vec<usize>,
    by_prefix: HashMap<String, Vec<usize>>,
}

/// `<ADDRESS>` in Envoy's built-in regexes.
macro_rules! address {
    () => {
        r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
    };
}

/// Envoy's built-in RE2 extractors, in the order it adds them: tag name, regex, substr,
/// negative match.
const RE2_DEFAULTS: &[(&str, &str, &str, &str)] = &[
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    (
        "envoy.dynamo_partition_id",
        r"^http\.[^\.]+\.dynamodb\.table\.[^\.]+\.capacity\.[^\.]+(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.[^\.]+\.dynamodb.(?:operation|table\.[^\.]+\.capacity)(\.([^\.]+))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.dynamo_table",
        r"^http\.[^\.]+\.dynamodb.(?:table|error)\.(([^\.]+)\.)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.([\w-]+))$",
        ".ssl.ciphers.",
        "",
    ),
    (
        "envoy.ssl_curve",
        r"^(?:listener|cluster)\..*?\.ssl\.curves(\.([\w-]+))$",
        ".ssl.curves.",
        "",
    ),
    (
        "envoy.ssl_sigalg",
        r"^(?:listener|cluster)\..*?\.ssl\.sigalgs(\.([\w-]+))$",
        ".ssl.sigalgs.",
        "",
    ),
    (
        "envoy.ssl_version",
        r"^(?:listener|cluster)\..*?\.ssl\.versions(\.(TLSv\d\.\d))$",
        ".ssl.versions.",
        "",
    ),
    (
        "cipher_suite",
        r"^cluster\.[^\.]+\.ssl\.ciphers(\.([\w-]+))$",
        ".ssl.ciphers.",
        "",
    ),
    (
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.(([^\.]+)\.)",
        ".http.",
        "",
    ),
    (
        "envoy.worker_id",
        concat!(
            r"^(?:listener\.(?:",
            address!(),
            r"|[^\.]+)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)"
        ),
        "",
        "",
    ),
    (
        "envoy.listener_address",
        concat!(r"^listener\.((", address!(), r"|[^\.]+)\.)"),
        "",
        "admin",
    ),
    (
        "envoy.rds_route_config",
        r"^http\.[^\.]+\.rds\.(([\w\-\./]+)\.)\w+?$",
        ".rds.",
        "",
    ),
    (
        "envoy.scoped_rds_config",
        r"^http\.[^\.]+\.scoped_rds\.(([\w\-\.]+)\.)\w+?$",
        ".scoped_rds.",
        "",
    ),
    (
        "envoy.rbac_policy_name",
        r"^http\.[^\.]+\.rbac\.(?:[^\.]+\.)?policy\.(([^\.]+)\.)(allowed|shadow_allowed|denied|shadow_denied)$",
        "",
        "",
    ),
    (
        "envoy.rbac_http_prefix",
        r"^http\.[^\.]+\.rbac\.(([^\.]+)\.).*?",
        "",
        "policy",
    ),
    (
        "envoy.proxy_protocol_prefix",
        r"^proxy_proto\.(([^\.]+)\.).+$",
        "",
        "versions",
    ),
    (
        "envoy.proxy_protocol_version",
        r"^proxy_proto\.((?:[^\.]+\.)?versions\.v(\d)\.)\w+$",
        "",
        "",
    ),
    (
        "envoy.tls_certificate",
        r"^(?:listener|cluster)\..*?\.ssl\.certificate\.(([^\.]+)\.).*$",
        ".ssl.certificate",
        "",
    ),
    ("envoy.xds_resource_name", r"^sds\.(([^\.]+)\.).+", "", ""),
];

/// Envoy's built-in token extractors, added after the RE2 ones.
const TOKEN_DEFAULTS: &[(&str, &str)] = &[
    (
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    (
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    (
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    (
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
    ("envoy.connection_limit_prefix", "connection_limit.$.**"),
    ("envoy.rbac_prefix", "$.rbac.**"),
    ("envoy.google_grpc_client_prefix", "grpc.$.**"),
];

/// The first token a regex anchors on (`^cluster\.` → `cluster`), as Envoy derives it to
/// index the extractor; empty when the regex does not say.
fn regex_prefix(regex: &str) -> &str {
    let Some(rest) = regex.strip_prefix('^') else {
        return "";
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end == 0 {
        return "";
    }
    let after = &rest[end..];
    if after.starts_with(r"\.") || after.starts_with(r"(?=\.)") || after == "$" {
        &rest[..end]
    } else {
        ""
    }
}

fn parse_tokens(pattern: &str) -> Vec<Token> {
    pattern
        .split('.')
        .map(|t| match t {
            "*" => Token::One,
            "**" => Token::Any,
            "$" => Token::Value,
            t => Token::Literal(t.to_string()),
        })
        .collect()
}

/// Matches `name` tokens against `pattern`; the index of the token `$` took. A trailing
/// `**` needs at least one token, as in Envoy.
fn match_tokens(pattern: &[Token], name: &[&str], at: usize) -> Option<Option<usize>> {
    let Some((first, rest)) = pattern.split_first() else {
        return name.is_empty().then_some(None);
    };
    match first {
        Token::Any => {
            let min = usize::from(rest.is_empty());
            (min..=name.len()).find_map(|k| match_tokens(rest, &name[k..], at + k))
        }
        _ => {
            let (tok, tail) = name.split_first()?;
            if let Token::Literal(l) = first {
                if l != tok {
                    return None;
                }
            }
            let found = match_tokens(rest, tail, at + 1)?;
            Some(if *first == Token::Value {
                Some(at)
            } else {
                found
            })
        }
    }
}

impl Extractor {
    /// The tag's value and the part of `name` it removes.
    fn extract<'n>(&self, name: &'n str) -> Option<(std::borrow::Cow<'n, str>, Range<usize>)> {
        match &self.rule {
            Rule::Re2 {
                regex,
                substr,
                negative,
            } => {
                if !substr.is_empty() && !name.contains(substr) {
                    return None;
                }
                let caps = regex.captures(name)?;
                let remove = caps.get(1).filter(|m| !m.is_empty())?;
                let value = caps
                    .get(2)
                    .filter(|m| !m.is_empty())
                    .map_or(remove.as_str(), |m| m.as_str());
                if !negative.is_empty() && value == *negative {
                    return None;
                }
                Some((value.into(), remove.range()))
            }
            Rule::Std(regex) => {
                let caps = regex.captures(name).ok()??;
                let remove = caps.get(1)?;
                let value = if caps.len() > 2 {
                    caps.get(2).map_or("", |m| m.as_str())
                } else {
                    remove.as_str()
                };
                Some((value.into(), remove.range()))
            }
            Rule::Tokens(pattern) => {
                let tokens: Vec<&str> = name.split('.').collect();
                let k = match_tokens(pattern, &tokens, 0)??;
                let start: usize = tokens[..k].iter().map(|t| t.len() + 1).sum();
                let end = start + tokens[k].len();
                let range = if k + 1 == tokens.len() {
                    start.saturating_sub(1)..end
                } else {
                    start..end + 1
                };
                Some((tokens[k].into(), range))
            }
            Rule::Fixed(v) => Some((v.clone().into(), 0..0)),
        }
    }
}

impl TagProducer {
    /// Envoy's built-in extractors only (a bootstrap without `stats_config`).
    pub fn envoy_defaults() -> TagProducer {
        Self::new(true, &[]).expect("the built-in extractors compile")
    }

    /// The extractors `stats_config` asks for: Envoy's built-in ones unless
    /// `use_all_default_tags` is false, then `specs` in order.
    pub fn new(use_defaults: bool, specs: &[TagSpec]) -> Result<TagProducer, TagError> {
        let mut extractors = Vec::new();
        if use_defaults {
            add_defaults(&mut extractors, |_| true);
        }
        for (index, spec) in specs.iter().enumerate() {
            if spec.name.is_empty() {
                return Err(TagError {
                    index,
                    field: "tag_name",
                    message: "tag_name cannot be empty".into(),
                });
            }
            match &spec.value {
                TagValue::Default => {
                    let before = extractors.len();
                    add_defaults(&mut extractors, |n| n == spec.name);
                    if extractors.len() == before {
                        return Err(TagError {
                            index,
                            field: "regex",
                            message: format!(
                                "No regex specified for tag specifier and no default regex for name: '{}'",
                                spec.name
                            ),
                        });
                    }
                }
                TagValue::Regex(r) => {
                    let regex = fancy_regex::Regex::new(r).map_err(|e| TagError {
                        index,
                        field: "regex",
                        message: format!("Invalid regex '{r}': {e}"),
                    })?;
                    extractors.push((
                        regex_prefix(r).to_string(),
                        spec.name.clone(),
                        Rule::Std(regex),
                    ));
                }
                TagValue::Fixed(v) => extractors.push((
                    regex_prefix(v).to_string(),
                    spec.name.clone(),
                    Rule::Fixed(v.clone()),
                )),
            }
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, name, _) in &extractors {
            *counts.entry(name.as_str()).or_default() += 1;
        }
        let shared: Vec<bool> = extractors
            .iter()
            .map(|(_, n, _)| counts[n.as_str()] > 1)
            .collect();
        let mut out = TagProducer {
            extractors: Vec::with_capacity(extractors.len()),
            without_prefix: Vec::new(),
            by_prefix: HashMap::new(),
        };
        for (i, ((prefix, name, rule), shared)) in extractors.into_iter().zip(shared).enumerate() {
            if prefix.is_empty() {
                out.without_prefix.push(i);
            } else {
                out.by_prefix.entry(prefix).or_default().push(i);
            }
            out.extractors.push(Extractor { name, rule, shared });
        }
        Ok(out)
    }

    /// `name`'s tag-extracted name and tags.
    pub fn produce(&self, name: &str) -> Tagged {
        let mut removed: Vec<Range<usize>> = Vec::new();
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut taken: Vec<&str> = Vec::new();
        let prefixed = name
            .split_once('.')
            .and_then(|(first, _)| self.by_prefix.get(first))
            .map_or(&[][..], |v| v.as_slice());
        for &i in self.without_prefix.iter().chain(prefixed) {
            let e = &self.extractors[i];
            if e.shared && taken.contains(&e.name.as_str()) {
                continue;
            }
            if let Some((value, range)) = e.extract(name) {
                if e.shared {
                    taken.push(&e.name);
                }
                tags.push((e.name.clone(), value.into_owned()));
                if !range.is_empty() {
                    removed.push(range);
                }
            }
        }
        removed.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(name.len());
        let mut at = 0;
        for r in removed {
            if r.start > at {
                out.push_str(&name[at..r.start]);
            }
            at = at.max(r.end);
        }
        out.push_str(&name[at.min(name.len())..]);
        Tagged { name: out, tags }
    }
}

/// Adds Envoy's built-in extractors whose tag names pass `keep`: the RE2 ones, then the
/// token ones.
fn add_defaults(out: &mut Vec<(String, String, Rule)>, keep: impl Fn(&str) -> bool) {
    for &(name, regex, substr, negative) in RE2_DEFAULTS.iter().filter(|d| keep(d.0)) {
        let compiled = regex::Regex::new(regex).expect("built-in tag regex");
        out.push((
            regex_prefix(regex).to_string(),
            name.to_string(),
            Rule::Re2 {
                regex: compiled,
                substr,
                negative,
            },
        ));
    }
    for &(name, pattern) in TOKEN_DEFAULTS.iter().filter(|d| keep(d.0)) {
        let tokens = parse_tokens(pattern);
        let prefix = match tokens.first() {
            Some(Token::Literal(l)) => l.clone(),
            _ => String::new(),
        };
        out.push((prefix, name.to_string(), Rule::Tokens(tokens)));
    }
}

#[cfg(test)]
mod tests;
