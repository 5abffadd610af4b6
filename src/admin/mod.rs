//! The admin listener, on Envoy's paths: `/ready`, `/stats` (text, JSON, Prometheus),
//! `/config_dump`, `/server_info`, `/listeners`, `/clusters`, `/quitquitquit`. Runs on the
//! control thread; reads stats cells and the snapshot, never touches a core.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::model::SharedSnapshot;
use crate::stats::Store;

mod certs;
mod clusters;
mod config_dump;
mod dump_filter;
mod help;
mod log;
mod profile;
mod runtime;
mod stats;
mod symbols;
pub use stats::breaker_stats;
use stats::{histograms_json, prometheus, quantiles_text, selected_stats};

/// What the admin handlers read.
pub struct AdminState {
    pub snapshot: SharedSnapshot,
    pub stats: Arc<Store>,
    /// Listener name → bound address, updated by LDS.
    pub listeners: Arc<arc_swap::ArcSwap<HashMap<Arc<str>, SocketAddr>>>,
    /// The snapshot version each core serves.
    pub served: Arc<crate::worker::Served>,
    /// False until the first xDS configuration arrived (always true without ADS).
    pub initialized: Arc<AtomicBool>,
    pub started: Instant,
    pub concurrency: usize,
    pub drain: tokio::sync::watch::Sender<bool>,
    pub failing: AtomicBool,
    pub command_line: Vec<String>,
    pub driver: String,
    /// The cores, for `/drain_listeners`.
    pub cores: Vec<tokio::sync::mpsc::UnboundedSender<crate::worker::CoreCommand>>,
    /// `--drain-time-s` and `--drain-strategy`.
    pub drain_time: std::time::Duration,
    pub gradual_drain: bool,
    /// Graceful admin drain under way: 1 inbound listeners, 2 all.
    pub draining: std::sync::atomic::AtomicU8,
    /// `admin.access_log`, written through the access-log thread.
    pub access_logs: Vec<crate::model::AccessLog>,
    pub log_tx: Option<std::sync::mpsc::Sender<crate::ctx::LogBatch>>,
    pub hostname: Arc<str>,
    /// The outlier detector's view of each cluster that has one (`/clusters`).
    pub outliers: Arc<crate::outlier::detector::Views>,
    /// What active health checking says of each cluster that has it (`/clusters`).
    pub health: Arc<crate::health::Views>,
}

/// Serves admin requests until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &state).await;
        });
    }
}

async fn connection(mut stream: tokio::net::TcpStream, state: &AdminState) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (mut exchange, len, body, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    // `Connection: close` or HTTP/1.0; also a chunked body, which admin does
                    // not read: answering then closing keeps its bytes from being taken for
                    // the next request.
                    let close = req.version == Some(0)
                        || req.headers.iter().any(|h| {
                            (h.name.eq_ignore_ascii_case("connection")
                                && h.value.eq_ignore_ascii_case(b"close"))
                                || h.name.eq_ignore_ascii_case("transfer-encoding")
                        });
                    let body = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .unwrap_or(0);
                    let exchange = log::AdminExchange {
                        start: std::time::SystemTime::now(),
                        started: Instant::now(),
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("/").to_string(),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                            .collect(),
                        peer,
                        local,
                        status: 0,
                        bytes_received: body as u64,
                        bytes_sent: 0,
                        hostname: state.hostname.clone(),
                    };
                    break (exchange, n, body, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
                _ => {
                    stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
                    return Ok(());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // The body (admin takes its parameters from the query) is read and dropped.
        if body > 1 << 20 {
            stream.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
            return Ok(());
        }
        while buf.len() < len + body {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..len + body);
        let (path, query) = exchange
            .target
            .split_once('?')
            .unwrap_or((&exchange.target, ""));
        let format = match (exchange.method.as_str(), path) {
            ("GET", "/debug/pprof/profile") => Some(profile::Format::Pprof),
            ("GET", "/debug/pprof/flamegraph") => Some(profile::Format::Flamegraph),
            _ => None,
        };
        let (status, content_type, body) = match format {
            // Sampling takes its time: awaited here, not in `handle`.
            Some(f) => profile::take(&query_params(query), f).await,
            None => handle(state, &exchange.method, &exchange.target),
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n{}\r\n",
            crate::http::local_reply::reason(status),
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        exchange.status = status;
        exchange.bytes_sent = body.len() as u64;
        if body.len() >= 1 << 20 {
            // A big mesh's `/stats` or `/config_dump`: what building it took goes back to
            // the OS (560,000 stats held 360 MB after `/stats/prometheus` otherwise).
            drop(body);
            crate::io::release_freed_soon();
        }
        log_request(state, &exchange);
        if close {
            return stream.shutdown().await;
        }
    }
}

/// Writes an admin request's line to every `admin.access_log`.
fn log_request(state: &AdminState, exchange: &log::AdminExchange) {
    let Some(tx) = &state.log_tx else { return };
    for l in &state.access_logs {
        let mut line = Vec::new();
        l.format.write(exchange, b"-", &mut line);
        crate::ctx::queue_log(tx, l.sink, line);
    }
}

/// Envoy's `ServerInfo.State` and its name: DRAINING once draining or failing health
/// checks, PRE_INITIALIZING until the first xDS configuration is in, else LIVE.
fn server_state(state: &AdminState) -> (u64, &'static str) {
    if *state.drain.borrow() || state.failing.load(Ordering::Relaxed) {
        (1, "DRAINING")
    } else if !state.initialized.load(Ordering::Acquire) {
        (2, "PRE_INITIALIZING")
    } else {
        (0, "LIVE")
    }
}

/// A query string's parameters (undecoded).
fn query_params(query: &str) -> HashMap<&str, &str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// Answers one admin request: (status, content type, body).
pub fn handle(state: &AdminState, method: &str, target: &str) -> (u16, &'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = query_params(query);
    let json_ct = "application/json";
    let text_ct = "text/plain; charset=UTF-8";
    match (method, path) {
        ("GET", "/ready") => {
            if *state.drain.borrow() || state.failing.load(Ordering::Relaxed) {
                (503, text_ct, b"DRAINING\n".to_vec())
            } else if !state.initialized.load(Ordering::Acquire) {
                // Envoy's answer until the first xDS configuration is in.
                (503, text_ct, b"PRE_INITIALIZING\n".to_vec())
            } else {
                (200, text_ct, b"LIVE\n".to_vec())
            }
        }
        ("GET", "/stats") | ("GET", "/stats/prometheus") => {
            let (stats, hists) = match selected_stats(state, &params) {
                Ok(v) => v,
                Err(e) => return (400, text_ct, e.into_bytes()),
            };
            if path == "/stats/prometheus" || params.get("format") == Some(&"prometheus") {
                let body = prometheus(&state.stats, &stats, &hists);
                (200, "text/plain; version=0.0.4", body.into_bytes())
            } else if params.get("format") == Some(&"json") {
                let mut list: Vec<Value> = stats
                    .iter()
                    .map(|s| json!({"name": s.name, "value": s.value as u64}))
                    .collect();
                list.push(histograms_json(&hists));
                (
                    200,
                    json_ct,
                    serde_json::to_vec_pretty(&json!({ "stats": list })).unwrap_or_default(),
                )
            } else {
                let mut out = String::new();
                for s in &stats {
                    // Envoy's stats are unsigned (a `remaining_cx_pools` of 2^64−1).
                    let _ = writeln!(out, "{}: {}", s.name, s.value as u64);
                }
                for h in &hists {
                    let _ = writeln!(out, "{}: {}", h.name, quantiles_text(h));
                }
                (200, text_ct, out.into_bytes())
            }
        }
        ("POST", "/drain_listeners") => drain_listeners(state, &params),
        ("POST", "/logging") => {
            let list: Vec<(String, String)> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            let list: Vec<(&str, &str)> =
                list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, body) = crate::logging::admin_logging(&list);
            (status, text_ct, body.into_bytes())
        }
        ("POST", "/reset_counters") => {
            state.stats.reset_counters();
            (200, text_ct, b"OK\n".to_vec())
        }
        ("POST", "/reopen_logs") => {
            if let Some(tx) = &state.log_tx {
                let _ = tx.send(crate::ctx::LogBatch::Reopen);
            }
            (200, text_ct, b"OK\n".to_vec())
        }
        ("GET", "/runtime") => (
            200,
            json_ct,
            serde_json::to_vec_pretty(&runtime::show(state)).unwrap_or_default(),
        ),
        ("POST", "/runtime_modify") => {
            let (status, body) = runtime::modify(state, &params);
            (status, text_ct, body)
        }
        ("GET", "/snapshot") => (
            200,
            json_ct,
            serde_json::to_vec_pretty(&config_dump::snapshot(state)).unwrap_or_default(),
        ),
        ("GET", "/certs") => (200, json_ct, certs::certs(&state.snapshot.load())),
        ("GET", "/config_dump") => {
            let mut dump = config_dump::config_dump(state);
            let regex = params.get("name_regex").map(|r| decode(r));
            if let Some(r) = &regex {
                match dump_filter::name_regex(r) {
                    Ok(re) => dump_filter::keep_named(&mut dump, &re),
                    Err(e) => return (400, text_ct, e.into_bytes()),
                }
            }
            let resource = params.get("resource").map(|r| decode(r));
            let selected = match config_dump::select(
                dump,
                params.contains_key("include_eds"),
                resource.as_deref(),
            ) {
                Ok(v) => Ok(v),
                // Every resource the regex left out: an empty dump, as Envoy prints it.
                Err(_) if regex.is_some() && config_dump::is_element(resource.as_deref()) => {
                    Ok(serde_json::json!({}))
                }
                Err(e) => return (404, "text/plain", e.into_bytes()),
            };
            let masked = match (selected, params.get("mask").map(|m| decode(m))) {
                (Ok(v), None) => Ok(v),
                (Ok(v), Some(m)) if resource.is_some() => dump_filter::mask_elements(v, &m),
                (Ok(v), Some(m)) => dump_filter::mask_configs(v, &m),
                (Err(e), _) => Err(e),
            };
            match masked {
                Ok(v) => {
                    let empty = v["configs"].as_array().is_some_and(|c| c.is_empty());
                    let v = if empty { serde_json::json!({}) } else { v };
                    (
                        200,
                        json_ct,
                        serde_json::to_vec_pretty(&v).unwrap_or_default(),
                    )
                }
                Err(e) => (400, text_ct, e.into_bytes()),
            }
        }
        // Envoy's keys, from mimalloc (Envoy's come from tcmalloc): `allocated` is what the
        // allocator holds committed, `heap_size` the most it has, `total_physical_bytes`
        // the resident set; mimalloc has no page heap or thread caches to report.
        ("GET", "/memory") => {
            let (commit, peak, rss) = crate::io::memory_info();
            let v = json!({
                "allocated": commit.to_string(),
                "heap_size": peak.to_string(),
                "pageheap_unmapped": "0",
                "pageheap_free": "0",
                "total_thread_cache": "0",
                "total_physical_bytes": rss.to_string(),
            });
            (
                200,
                json_ct,
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            )
        }
        // Envoy answers `{}` whatever its init state (no unready targets are listed).
        ("GET", "/init_dump") => (200, json_ct, b"{}".to_vec()),
        ("GET", "/server_info") => {
            let snap = state.snapshot.load();
            let node = snap
                .bootstrap
                .node
                .as_ref()
                .map(|n| json!({"id": n.id, "cluster": n.cluster}))
                .unwrap_or(json!({}));
            let uptime = state.started.elapsed().as_secs();
            let body = json!({
                "version": format!("ringside/{}", env!("CARGO_PKG_VERSION")),
                "state": server_state(state).1,
                "hot_restart_version": "disabled",
                "command_line_options": {
                    "concurrency": state.concurrency,
                    "io_driver": state.driver,
                    "argv": state.command_line,
                },
                "node": node,
                "uptime_current_epoch": format!("{uptime}s"),
                "uptime_all_epochs": format!("{uptime}s"),
                "snapshot_version": snap.version,
            });
            (
                200,
                json_ct,
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
        }
        ("GET", "/listeners") => {
            let listeners = state.listeners.load();
            let mut names: Vec<_> = listeners.iter().collect();
            names.sort();
            if params.get("format") == Some(&"json") {
                let list: Vec<Value> = names
                    .iter()
                    .map(|(n, a)| match crate::model::internal::is_synthetic(a) {
                        true => json!({"name": n.as_ref(), "local_address": {"envoy_internal_address": {"server_listener_name": n.as_ref()}}}),
                        false => json!({"name": n.as_ref(), "local_address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}),
                    })
                    .collect();
                (
                    200,
                    json_ct,
                    serde_json::to_vec_pretty(&json!({ "listener_statuses": list }))
                        .unwrap_or_default(),
                )
            } else {
                let mut out = String::new();
                for (n, a) in names {
                    match crate::model::internal::is_synthetic(a) {
                        true => writeln!(out, "{n}::envoy://{n}/"),
                        false => writeln!(out, "{n}::{a}"),
                    }
                    .ok();
                }
                (200, text_ct, out.into_bytes())
            }
        }
        ("GET", "/clusters") => {
            let snap = state.snapshot.load();
            if params.get("format") == Some(&"json") {
                (
                    200,
                    json_ct,
                    serde_json::to_vec_pretty(&clusters::json(
                        &snap,
                        &state.outliers,
                        &state.health,
                    ))
                    .unwrap_or_default(),
                )
            } else {
                (
                    200,
                    text_ct,
                    clusters::text(&snap, &state.outliers, &state.health).into_bytes(),
                )
            }
        }
        ("POST", "/quitquitquit") => {
            let _ = state.drain.send(true);
            (200, text_ct, b"OK\n".to_vec())
        }
        ("POST", "/healthcheck/fail") => {
            state.failing.store(true, Ordering::Relaxed);
            (200, text_ct, b"OK\n".to_vec())
        }
        ("POST", "/healthcheck/ok") => {
            state.failing.store(false, Ordering::Relaxed);
            (200, text_ct, b"OK\n".to_vec())
        }
        ("GET", "/" | "/help") => (200, text_ct, help::HELP.as_bytes().to_vec()),
        (
            m,
            "/quitquitquit" | "/healthcheck/fail" | "/healthcheck/ok" | "/drain_listeners"
            | "/reopen_logs" | "/runtime_modify" | "/reset_counters" | "/logging",
        ) => (
            405,
            text_ct,
            format!("Method {m} not allowed, POST required.").into_bytes(),
        ),
        _ => (
            404,
            text_ct,
            b"invalid path. admin commands are listed at /\n".to_vec(),
        ),
    }
}

/// Percent-decoding of a query component (`+` is a space, as in forms).
fn decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /drain_listeners[?inboundonly][&graceful][&skip_exit]`, as Envoy 1.40 answers it:
/// the listeners' connections (all, or the inbound ones) are asked to close with the drain
/// strategy over the drain time; a graceful drain keeps accepting for the drain time and
/// then stops the listeners, a plain one stops them at once; `skip_exit` keeps them
/// listening. A repeated graceful drain of the same scope answers OK and changes nothing.
fn drain_listeners(
    state: &AdminState,
    params: &HashMap<&str, &str>,
) -> (u16, &'static str, Vec<u8>) {
    let inbound_only = params.contains_key("inboundonly");
    let graceful = params.contains_key("graceful");
    let skip_exit = params.contains_key("skip_exit");
    let scope = if inbound_only { 1 } else { 2 };
    if graceful {
        let before = state.draining.fetch_max(scope, Ordering::AcqRel);
        if before >= scope {
            return (200, "text/plain; charset=UTF-8", b"OK\n".to_vec());
        }
    }
    let stop_after = match (skip_exit, graceful) {
        (true, _) => None,
        (false, true) => Some(state.drain_time),
        (false, false) => Some(std::time::Duration::ZERO),
    };
    for core in &state.cores {
        let _ = core.send(crate::worker::CoreCommand::Drain {
            inbound_only,
            window: state.drain_time,
            gradual: state.gradual_drain,
            stop_after,
        });
    }
    (200, "text/plain; charset=UTF-8", b"OK\n".to_vec())
}

fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::new();
    crate::model::format::write_start_time(t, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
