//! CEL expressions over Envoy's request attributes, as `istio.stats` evaluates its dimension
//! overrides (the Telemetry API's `tagOverrides`): `request.host`,
//! `string(destination.port)`, `request.headers['x-user']`,
//! `filter_state.upstream_peer.app`, `has(request.host) ? request.host : "unknown"`.
//!
//! An expression is parsed once, at configuration time, and the attributes it reads are
//! found then: each becomes an access-log format command (or a peer's field), so an
//! expression reads a request exactly as an access log does. An attribute Ringside does not
//! provide is refused by name. At evaluation only the attributes an expression reads are
//! built; a missing one (no such header, no peer) is absent, which CEL reports as an error,
//! and the dimension is `unknown`, as in istio-proxy.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{operators, Expr as Ast, IdedExpr, LiteralValue};
use cel::objects::{Key, Map, Value};

use super::format::{Addr, Command, Context, GrpcForm, Val};
use crate::stats::istio::Peer;

/// The standard environment (functions and macros), built once.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// The attribute roots Envoy defines, and those Ringside reads.
const ROOTS: [&str; 8] = [
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
    "xds",
    "filter_state",
];

/// How an attribute's value is read.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A format command's text, as a CEL string.
    Text(Command),
    /// The first of a format command's comma-separated values (a certificate's first URI
    /// SAN, as Envoy's attribute gives it).
    First(Command),
    /// A format command's text, as CEL bytes (filter state's serialized objects).
    Bytes(Command),
    /// A format command's number, as a CEL int.
    Int(Command),
    /// A format command's number, as a CEL uint.
    Uint(Command),
    /// The path without its query, or the query alone.
    UrlPath,
    Query,
    /// `upstream.port`: the chosen host's port.
    UpstreamPort,
    /// A field of a peer's metadata (`filter_state.downstream_peer.app`), or all of them.
    Peer(bool, Option<PeerField>),
}

/// The fields of Istio's peer metadata object that Ringside knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerField {
    App,
    Version,
    Service,
    Revision,
    Namespace,
    Workload,
    Cluster,
}

const PEER_FIELDS: [(&str, PeerField); 7] = [
    ("app", PeerField::App),
    ("version", PeerField::Version),
    ("service", PeerField::Service),
    ("revision", PeerField::Revision),
    ("namespace", PeerField::Namespace),
    ("workload", PeerField::Workload),
    ("cluster", PeerField::Cluster),
];

impl PeerField {
    fn of(self, p: &Peer) -> &str {
        match self {
            PeerField::App => &p.app,
            PeerField::Version => &p.version,
            PeerField::Service => &p.canonical_service,
            PeerField::Revision => &p.canonical_revision,
            PeerField::Namespace => &p.namespace,
            PeerField::Workload => &p.workload,
            PeerField::Cluster => &p.cluster,
        }
    }
}

/// One attribute an expression reads: `root.field`, or `root.field[key]` for a map.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    root: &'static str,
    field: String,
    key: Option<String>,
    source: Source,
    /// Where the value is bound: a variable (a qualified name such as `request.host`, so
    /// that no map is built for it) and the keys of the maps it sits in under that name.
    var: String,
    keys: Vec<Key>,
}

/// A variable being bound: a value, or a map being filled.
enum Slot {
    Value(Value),
    Map(HashMap<Key, Value>),
}

/// A parsed expression and the attributes it reads.
pub struct Expr {
    pub source: Box<str>,
    program: cel::Program,
    reads: Vec<Read>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("cel::Expr").field(&self.source).finish()
    }
}

/// The peers a request's telemetry knows: the client's and the upstream's workloads.
#[derive(Clone, Copy, Default)]
pub struct Peers<'a> {
    pub downstream: Option<&'a Peer>,
    pub upstream: Option<&'a Peer>,
}

impl Expr {
    /// Parses `source` and finds what it reads. Errors say what is wrong in words.
    pub fn parse(source: &str) -> Result<Expr, String> {
        let program = cel::Program::compile(source).map_err(|e| {
            let e = e.to_string();
            format!(
                "is not a valid CEL expression: {}",
                e.lines().next().unwrap_or("")
            )
        })?;
        let refs = program.references();
        if let Some(f) = ["duration", "timestamp"]
            .into_iter()
            .find(|f| refs.has_function(f))
        {
            return Err(format!(
                "calls `{f}()`: CEL's time types are not built into Ringside"
            ));
        }
        let mut reads = Vec::new();
        let mut whole = Vec::new();
        walk(
            program.expression(),
            &mut reads,
            &mut whole,
            &mut Vec::new(),
        )?;
        for r in &mut reads {
            let key = |s: &str| Key::String(Arc::new(s.to_string()));
            if whole.contains(&r.root) {
                r.var = r.root.to_string();
                r.keys = std::iter::once(key(&r.field))
                    .chain(r.key.as_deref().map(key))
                    .collect();
            } else {
                r.var = format!("{}.{}", r.root, r.field);
                r.keys = r.key.as_deref().map(key).into_iter().collect();
            }
        }
        // The environment is built here, on the control thread, not on a first request.
        LazyLock::force(&ENV);
        Ok(Expr {
            source: source.into(),
            program,
            reads,
        })
    }

    /// Calls `f` with every format command the expression reads.
    pub fn for_each_command(&self, f: &mut dyn FnMut(&Command)) {
        for r in &self.reads {
            match &r.source {
                Source::Text(c)
                | Source::First(c)
                | Source::Bytes(c)
                | Source::Int(c)
                | Source::Uint(c) => f(c),
                Source::UrlPath | Source::Query => f(&Command::Req(":path".into(), None)),
                Source::UpstreamPort => f(&Command::UpstreamHost),
                Source::Peer(..) => {}
            }
        }
    }

    /// Evaluates the expression against what `ctx` knows of a finished request or
    /// connection and appends its value as istio-proxy prints a tag: `unknown` when it
    /// fails (a missing attribute included).
    pub fn eval(&self, ctx: &dyn Context, peers: Peers<'_>, out: &mut String) {
        let mut vars: Vec<(&str, Slot)> = Vec::with_capacity(self.reads.len());
        let mut buf = Vec::new();
        for r in &self.reads {
            let v = read(&r.source, ctx, peers, &mut buf);
            let Some((first, rest)) = r.keys.split_first() else {
                // A missing scalar is left unbound: reading it is an error.
                if let Some(v) = v {
                    vars.push((&r.var, Slot::Value(v)));
                }
                continue;
            };
            // A map is bound even when empty, so that `has()` and `in` can test it.
            let i = match vars.iter().position(|(n, _)| *n == r.var) {
                Some(i) => i,
                None => {
                    vars.push((&r.var, Slot::Map(HashMap::new())));
                    vars.len() - 1
                }
            };
            let Slot::Map(map) = &mut vars[i].1 else {
                continue;
            };
            match (rest.first(), v) {
                (None, Some(v)) => {
                    map.insert(first.clone(), v);
                }
                (None, None) => {}
                // No peer: no object (reading it is an error, as in Envoy).
                (Some(_), None) if matches!(r.source, Source::Peer(..)) => {}
                (Some(second), v) => {
                    let inner = map
                        .entry(first.clone())
                        .or_insert_with(|| Value::Map(Map::from(HashMap::<Key, Value>::new())));
                    if let (Value::Map(m), Some(v)) = (inner, v) {
                        Arc::make_mut(&mut m.map).insert(second.clone(), v);
                    }
                }
            }
        }
        let mut c = cel::Context::with_env(ENV.clone());
        for (name, slot) in vars {
            let v = match slot {
                Slot::Value(v) => v,
                Slot::Map(m) => Value::Map(Map::from(m)),
            };
            c.add_variable_from_value(name, v);
        }
        match self.program.execute(&c) {
            Ok(v) => print(&v, out),
            Err(_) => out.push_str("unknown"),
        }
    }
}

/// The value of one attribute, `None` when the request has none.
fn read(source: &Source, ctx: &dyn Context, peers: Peers<'_>, buf: &mut Vec<u8>) -> Option<Value> {
    let mut text = |c: &Command| -> Option<String> {
        buf.clear();
        match ctx.write(c, buf) {
            Val::None => None,
            _ => Some(String::from_utf8_lossy(buf).into_owned()),
        }
    };
    let path = || Command::Req(":path".into(), None);
    Some(match source {
        Source::Text(c) => Value::from(text(c)?),
        Source::First(c) => Value::from(text(c)?.split(',').next().unwrap_or("").to_string()),
        Source::Bytes(c) => Value::Bytes(Arc::new(text(c)?.into_bytes())),
        Source::Int(c) => Value::Int(text(c)?.parse().ok()?),
        Source::Uint(c) => Value::UInt(text(c)?.parse().ok()?),
        Source::UrlPath => {
            let p = text(&path())?;
            Value::from(p.split('?').next().unwrap_or("").to_string())
        }
        Source::Query => {
            let p = text(&path())?;
            Value::from(p.split_once('?').map_or("", |(_, q)| q).to_string())
        }
        Source::UpstreamPort => {
            let host = text(&Command::UpstreamHost)?;
            Value::Int(host.rsplit(':').next()?.parse().ok()?)
        }
        Source::Peer(up, field) => {
            let p = if *up {
                peers.upstream
            } else {
                peers.downstream
            }?;
            match field {
                Some(f) => Value::from(f.of(p).to_string()),
                None => {
                    let m: HashMap<Key, Value> = PEER_FIELDS
                        .iter()
                        .map(|(n, f)| {
                            (
                                Key::String(Arc::new(n.to_string())),
                                Value::from(f.of(p).to_string()),
                            )
                        })
                        .collect();
                    Value::Map(Map::from(m))
                }
            }
        }
    })
}

/// The identifier path `a.b.c` an expression spells (its root first), and whether its
/// last step is a `has()` test.
fn path(e: &IdedExpr) -> Option<Vec<&str>> {
    match &e.expr {
        Ast::Ident(n) => Some(vec![n.as_str()]),
        Ast::Select(s) => {
            let mut p = path(&s.operand)?;
            p.push(&s.field);
            Some(p)
        }
        _ => None,
    }
}

fn literal_string(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// Finds the attributes `e` reads; `bound` are a comprehension's variables. `whole` are
/// the roots the expression tests or indexes as maps (`has(request.referer)`,
/// `filter_state['key']`): their attributes are bound in one map named by the root, where
/// the others are bound each by its qualified name (no map to build).
fn walk(
    e: &IdedExpr,
    reads: &mut Vec<Read>,
    whole: &mut Vec<&'static str>,
    bound: &mut Vec<String>,
) -> Result<(), String> {
    let mut walk = |x: &IdedExpr, bound: &mut Vec<String>| walk(x, reads, whole, bound);
    match &e.expr {
        Ast::Ident(_) | Ast::Select(_) => {
            if let Some(p) = path(e) {
                if bound.iter().any(|b| b == p[0]) {
                    return Ok(());
                }
                if let (Ast::Select(s), Some(root)) = (&e.expr, ROOTS.iter().find(|r| **r == p[0]))
                {
                    if s.test && !whole.contains(root) {
                        whole.push(root);
                    }
                }
                return attribute(&p, None, reads);
            }
            if let Ast::Select(s) = &e.expr {
                walk(&s.operand, bound)?;
            }
            Ok(())
        }
        Ast::Call(c) => {
            // `root.map['key']`: one key of a map attribute.
            // `'key' in root.map`: the same read.
            let pair = match c.func_name.as_str() {
                operators::INDEX => Some((0, 1)),
                operators::IN => Some((1, 0)),
                _ => None,
            };
            if let (Some((m, k)), None, 2) = (pair, &c.target, c.args.len()) {
                if let (Some(p), Some(k)) = (path(&c.args[m]), literal_string(&c.args[k])) {
                    if !bound.iter().any(|b| b == p[0]) {
                        if let (1, Some(root)) = (p.len(), ROOTS.iter().find(|r| **r == p[0])) {
                            if !whole.contains(root) {
                                whole.push(root);
                            }
                        }
                        return attribute(&p, Some(k), reads);
                    }
                }
            }
            if let Some(t) = &c.target {
                walk(t, bound)?;
            }
            for a in &c.args {
                walk(a, bound)?;
            }
            Ok(())
        }
        Ast::Comprehension(c) => {
            walk(&c.iter_range, bound)?;
            walk(&c.accu_init, bound)?;
            let n = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            let r = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| walk(x, bound));
            bound.truncate(n);
            r
        }
        Ast::List(l) => l.elements.iter().try_for_each(|x| walk(x, bound)),
        Ast::Map(m) => m.entries.iter().try_for_each(|x| match &x.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                walk(&me.key, bound)?;
                walk(&me.value, bound)
            }
            cel::common::ast::EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Ast::Struct(_) => Err("builds a message, which Ringside does not evaluate".into()),
        Ast::Literal(_) | Ast::Unspecified => Ok(()),
    }
}

/// Records the attribute `p` (an identifier path) reads, with `key` when it indexes a map
/// by a literal.
fn attribute(p: &[&str], key: Option<&str>, reads: &mut Vec<Read>) -> Result<(), String> {
    let Some(&root) = ROOTS.iter().find(|r| **r == p[0]) else {
        return Err(format!(
            "reads `{}`, which is not one of Envoy's attributes ({})",
            p[0],
            ROOTS.join(", ")
        ));
    };
    let Some(&field) = p.get(1) else {
        return match (root, key) {
            ("filter_state", Some(k)) => push(reads, root, k, None, filter_state(k, None)?),
            _ => Err(format!(
                "reads `{root}` whole; Ringside reads its attributes one by one ({root}.<name>)"
            )),
        };
    };
    // A map attribute's key: the next identifier, or the literal index.
    let sub = p.get(2).copied().or(key);
    let name = format!("{root}.{field}");
    let req = |h: &str| Command::Req(h.into(), None);
    let source = match (root, field) {
        ("request", "path") => Source::Text(req(":path")),
        ("request", "url_path") => Source::UrlPath,
        ("request", "host") => Source::Text(req(":authority")),
        ("request", "scheme") => Source::Text(req(":scheme")),
        ("request", "method") => Source::Text(req(":method")),
        ("request", "referer") => Source::Text(req("referer")),
        ("request", "useragent") => Source::Text(req("user-agent")),
        ("request", "id") => Source::Text(req("x-request-id")),
        ("request", "query") => Source::Query,
        ("request", "protocol") => Source::Text(Command::Protocol),
        ("request", "size") => Source::Int(Command::BytesReceived),
        ("request" | "response", "headers") => {
            let Some(h) = sub else {
                return Err(format!(
                    "reads `{name}` other than by a literal key ({name}['name'])"
                ));
            };
            // Looked up without regard to case, kept under the key as written.
            let lower = h.to_ascii_lowercase();
            let cmd = match root {
                "request" => req(&lower),
                _ => Command::Resp(lower, None),
            };
            return push(reads, root, field, Some(h), Source::Text(cmd));
        }
        ("response", "code") => Source::Int(Command::ResponseCode),
        ("response", "code_details") => Source::Text(Command::ResponseCodeDetails),
        ("response", "grpc_status") => Source::Int(Command::GrpcStatus(GrpcForm::Number)),
        ("response", "size") => Source::Int(Command::BytesSent),
        ("source", "address") => Source::Text(Command::DownstreamRemote(Addr::Full)),
        ("source", "port") => Source::Int(Command::DownstreamRemote(Addr::Port)),
        ("destination", "address") => Source::Text(Command::DownstreamLocal(Addr::Full)),
        ("destination", "port") => Source::Int(Command::DownstreamLocal(Addr::Port)),
        ("connection", "requested_server_name") => Source::Text(Command::RequestedServerName),
        ("connection", "uri_san_peer_certificate") => Source::First(Command::DownstreamPeerUriSan),
        ("connection", "uri_san_local_certificate") => {
            Source::First(Command::DownstreamLocalUriSan)
        }
        ("connection", "termination_details") => {
            Source::Text(Command::ConnectionTerminationDetails)
        }
        ("upstream", "address") => Source::Text(Command::UpstreamHost),
        ("upstream", "port") => Source::UpstreamPort,
        ("upstream", "local_address") => Source::Text(Command::UpstreamLocal(Addr::Full)),
        ("upstream", "transport_failure_reason") => {
            Source::Text(Command::UpstreamTransportFailureReason)
        }
        ("upstream", "request_attempt_count") => Source::Uint(Command::UpstreamRequestAttemptCount),
        ("xds", "cluster_name") => Source::Text(Command::UpstreamClusterRaw),
        ("xds", "route_name") => Source::Text(Command::RouteName),
        ("filter_state", k) => {
            let source = filter_state(k, sub)?;
            let key = match source {
                Source::Peer(_, Some(_)) => sub,
                _ => None,
            };
            return push(reads, root, k, key, source);
        }
        _ => {
            return Err(format!(
                "reads `{name}`, an attribute Ringside does not provide"
            ))
        }
    };
    push(reads, root, field, None, source)
}

/// `filter_state[key]`: Istio's peer objects by field, else the object's serialized form.
fn filter_state(key: &str, field: Option<&str>) -> Result<Source, String> {
    let up = match key {
        "downstream_peer" => false,
        "upstream_peer" => true,
        _ => return Ok(Source::Bytes(Command::FilterState(key.into(), true))),
    };
    let Some(field) = field else {
        return Ok(Source::Peer(up, None));
    };
    match PEER_FIELDS.iter().find(|(n, _)| *n == field) {
        Some((_, f)) => Ok(Source::Peer(up, Some(*f))),
        None => Err(format!(
            "reads `filter_state.{key}.{field}`: Ringside knows a peer's {}",
            PEER_FIELDS.map(|(n, _)| n).join(", ")
        )),
    }
}

fn push(
    reads: &mut Vec<Read>,
    root: &'static str,
    field: &str,
    key: Option<&str>,
    source: Source,
) -> Result<(), String> {
    let r = Read {
        root,
        field: field.to_string(),
        key: key.map(str::to_string),
        source,
        var: String::new(),
        keys: Vec::new(),
    };
    if !reads.contains(&r) {
        reads.push(r);
    }
    Ok(())
}

mod print;
#[cfg(test)]
mod tests;

use print::print;
pub use print::six_digits;
