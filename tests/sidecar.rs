//! Ringside as a sidecar for real: two network namespaces joined by a veth pair (an
//! "app" host and a "peer" host), `ringside iptables` applied inside the app namespace,
//! Ringside running there as uid 1337 with Istio's virtualOutbound / virtualInbound
//! shape. Needs root, iproute2 and iptables; elsewhere it is skipped with a message.

mod support;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use support::*;

/// Prints past libtest's output capture, so a skipped test is visible in `cargo test`.
macro_rules! skip {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// The namespaces of one run; removed on drop.
struct Netns {
    app: String,
    peer: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.app));
        let _ = sh(&format!("ip netns del {}", self.peer));
    }
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const APP_IP: &str = "10.77.0.1";
const PEER_IP: &str = "10.77.0.2";
const APP_IP6: &str = "fd77::1";
const PEER_IP6: &str = "fd77::2";

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv"] {
        if sh(&format!("command -v {tool}")).is_err() {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Creates the two namespaces; `tag` keeps the names of tests running at once apart.
fn setup(tag: char) -> Result<Netns, String> {
    let id = format!("{tag}{}", std::process::id() % 100_000);
    let ns = Netns {
        app: format!("rs-app-{id}"),
        peer: format!("rs-peer-{id}"),
    };
    let (a, p) = (&ns.app, &ns.peer);
    // Pids repeat across runs: what a killed earlier run left under these names goes first.
    for stale in [format!("ip netns del {a}"), format!("ip netns del {p}")] {
        let _ = sh(&stale);
    }
    for cmd in [
        format!("ip netns add {a}"),
        format!("ip netns add {p}"),
        format!("ip link add rsa{id} type veth peer name rsp{id}"),
        format!("ip link set rsa{id} netns {a}"),
        format!("ip link set rsp{id} netns {p}"),
        format!("ip -n {a} addr add {APP_IP}/24 dev rsa{id}"),
        format!("ip -n {p} addr add {PEER_IP}/24 dev rsp{id}"),
        format!("ip -n {a} addr add {APP_IP6}/64 dev rsa{id} nodad"),
        format!("ip -n {p} addr add {PEER_IP6}/64 dev rsp{id} nodad"),
        format!("ip -n {a} link set rsa{id} up"),
        format!("ip -n {p} link set rsp{id} up"),
        format!("ip -n {a} link set lo up"),
        format!("ip -n {p} link set lo up"),
    ] {
        sh(&cmd)?;
    }
    Ok(ns)
}

/// The namespaces for `test`, or `None` (and a visible SKIPPED line) where they cannot
/// be made here.
fn namespaces(test: &str, tag: char) -> Option<Netns> {
    if let Some(why) = unsupported() {
        skip!("SKIPPED {test}: {why} (needs root, iproute2, iptables, setpriv)");
        return None;
    }
    match setup(tag) {
        Ok(ns) => Some(ns),
        Err(e) => {
            skip!("SKIPPED {test}: cannot create network namespaces: {e}");
            None
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it creates live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns handle");
        // SAFETY: a valid namespace descriptor; setns changes only this thread's namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

fn bind_in(ns: &str, addr: &str) -> std::net::TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    in_ns(ns, move || std::net::TcpListener::bind(addr).unwrap())
}

/// One blocking exchange from inside `ns`: connect, send, half-close, read to the end.
fn exchange(ns: &str, to: &str, send: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let to: SocketAddr = to.parse().unwrap();
    let send = send.to_vec();
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&send).map_err(|e| e.to_string())?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// A `GET path` with `Host: host` from inside `ns`; the whole response as text.
fn http_get_from(ns: &str, to: &str, path: &str, host: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    String::from_utf8_lossy(&exchange(ns, to, req.as_bytes()).unwrap()).into_owned()
}

/// Reads until `n` bytes arrived without sending anything (server-first protocols).
fn read_first(ns: &str, to: &str, n: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = vec![0u8; n];
        s.read_exact(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// A stat of the proxy in the app namespace (its admin is on the namespace's loopback).
fn stat(ns: &str, admin: SocketAddr, name: &str) -> i64 {
    let out = exchange_get(ns, admin, "/stats");
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn exchange_get(ns: &str, addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

fn tcp_proxy(prefix: &str, cluster: &str) -> String {
    format!(
        r#"[{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {prefix}, cluster: {cluster}}}}}]"#
    )
}

fn hcm(prefix: &str, cluster: &str) -> String {
    format!(
        r#"[{{name: envoy.filters.network.http_connection_manager, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {prefix}, route_config: {{virtual_hosts: {vh}}}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]"#,
        vh = all_to(cluster)
    )
}

/// Istio's sidecar shape, reduced: virtualOutbound hands captured connections to the
/// listener of their destination or passes them through; virtualInbound picks a chain by
/// port or sniffed protocol and reaches the app from 127.0.0.6.
fn sidecar_config(transparent: bool) -> String {
    let inspectors = r#"[{name: envoy.filters.listener.original_dst, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}},
      {name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}, filter_disabled: {destination_port_range: {start: 15006, end: 15007}}},
      {name: envoy.filters.listener.http_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}]"#;
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15001}}}}
    use_original_dst: true
    filter_chains:
    - {{name: virtualOutbound-blackhole, filter_chain_match: {{destination_port: 15001}}, filters: {blackhole}}}
    - {{name: virtualOutbound-catchall-tcp, filters: {passthrough}}}
  - name: virtualOutbound6
    address: {{socket_address: {{address: "::", port_value: 15001}}}}
    use_original_dst: true
    filter_chains:
    - {{name: virtualOutbound-blackhole, filter_chain_match: {{destination_port: 15001}}, filters: {blackhole}}}
    - {{name: virtualOutbound-catchall-tcp, filters: {passthrough}}}
  # istiod's shape for a TCP port of any address: passthrough from a hand-over listener.
  - name: 0.0.0.0_7200
    address: {{socket_address: {{address: 0.0.0.0, port_value: 7200}}}}
    bind_to_port: false
    filter_chains: [{{filters: {passthrough_7200}}}]
  - name: {PEER_IP}_8080
    address: {{socket_address: {{address: {PEER_IP}, port_value: 8080}}}}
    bind_to_port: false
    filter_chains: [{{filters: {outbound_http}}}]
  # An outbound listener for port 9000 of any address (istiod's 0.0.0.0_PORT for HTTP
  # services): inbound traffic to the app's 9000 must never be handed to it.
  - name: 0.0.0.0_9000
    address: {{socket_address: {{address: 0.0.0.0, port_value: 9000}}}}
    bind_to_port: false
    filter_chains: [{{filters: {blackhole_9000}}}]
  - name: virtualInbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}
    transparent: {transparent}
    listener_filters: {inspectors}
    listener_filters_timeout: 0s
    continue_on_listener_filters_timeout: true
    filter_chains:
    - {{name: virtualInbound-blackhole, filter_chain_match: {{destination_port: 15006}}, filters: {inbound_blackhole}}}
    - {{name: inbound-9200-tcp, filter_chain_match: {{destination_port: 9200}}, filters: {inbound_tcp_9200}}}
    - {{name: virtualInbound-catchall-http, filter_chain_match: {{transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]}}, filters: {inbound_http}}}
    default_filter_chain: {{name: virtualInbound-catchall-tcp, filters: {inbound_tcp}}}
  clusters:
  - {{name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 2s}}
  - {{name: InboundPassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 2s, upstream_bind_config: {{source_address: {{address: 127.0.0.6, port_value: 0}}}}}}
  - {{name: BlackHoleCluster, type: STATIC, connect_timeout: 2s}}
  - {peer_cluster}
"#,
        blackhole = tcp_proxy("BlackHoleCluster", "BlackHoleCluster"),
        blackhole_9000 = tcp_proxy("outbound_9000", "BlackHoleCluster"),
        passthrough_7200 = tcp_proxy("outbound_7200", "PassthroughCluster"),
        passthrough = tcp_proxy("PassthroughCluster", "PassthroughCluster"),
        outbound_http = hcm("outbound_8080", "outbound|8080||peer"),
        inbound_blackhole = tcp_proxy("InboundBlackHole", "BlackHoleCluster"),
        inbound_tcp_9200 = tcp_proxy("inbound_9200", "InboundPassthroughCluster"),
        inbound_http = hcm("inbound_http", "InboundPassthroughCluster"),
        inbound_tcp = tcp_proxy("InboundPassthroughCluster", "InboundPassthroughCluster"),
        peer_cluster = cluster(
            "'outbound|8080||peer'",
            &[format!("{PEER_IP}:8080").parse().unwrap()],
            ""
        ),
    )
}

/// Ringside running inside the app namespace as uid 1337; killed on drop.
struct Sidecar {
    child: std::process::Child,
    admin: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// `setpriv_extra`: more setpriv options (capabilities for TPROXY).
    async fn start(app: &str, config: &str, setpriv_extra: &[&str]) -> Sidecar {
        let dir = temp_dir();
        sh(&format!("chmod 777 {}", dir.display())).unwrap();
        let cfg = dir.join("sidecar.yaml");
        std::fs::write(&cfg, config).unwrap();
        let admin_path = dir.join("admin");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                app,
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
            ])
            .args(setpriv_extra)
            .arg(env!("CARGO_BIN_EXE_ringside"))
            .args([
                "-c",
                cfg.to_str().unwrap(),
                "--concurrency",
                "2",
                "--drain-time-s",
                "1",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin: SocketAddr = loop {
            if let Some(a) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not start: {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Sidecar { child, admin, dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tproxy_inbound_capture_keeps_the_destination() {
    let Some(ns) = namespaces("tproxy_inbound_capture_keeps_the_destination", 't') else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_ringside");
    let (app, peer) = (ns.app.clone(), ns.peer.clone());
    let app_http = Backend::start_on("app", bind_in(&app, "0.0.0.0:9000"));
    let (_, app_echo) = echo_server(bind_in(&app, "0.0.0.0:9100"));
    if let Err(e) = sh(&format!(
        "ip netns exec {app} {bin} iptables -m TPROXY -d 15090,15021"
    )) {
        skip!("SKIPPED tproxy_inbound_capture_keeps_the_destination: TPROXY unavailable: {e}");
        return;
    }
    // A transparent listener needs CAP_NET_ADMIN, as istio-proxy has in TPROXY mode.
    let sidecar = Sidecar::start(
        &app,
        &sidecar_config(true),
        &["--inh-caps=+net_admin", "--ambient-caps=+net_admin"],
    )
    .await;
    let admin = sidecar.admin;
    let out = http_get_from(&peer, &format!("{APP_IP}:9000"), "/tproxied", "app");
    assert!(
        out.contains("upstream app /tproxied"),
        "{out}\n{}",
        std::fs::read_to_string(sidecar.dir.join("stderr")).unwrap_or_default()
    );
    assert_eq!(app_http.seen.requests.load(SeqCst), 1);
    assert_eq!(
        stat(&app, admin, "http.inbound_http.downstream_rq_total"),
        1
    );
    // No NAT: the accepted socket's local address is the original destination.
    assert_eq!(
        stat(&app, admin, "listener.0.0.0.0_15006.original_dst_missing"),
        1
    );
    assert_eq!(
        exchange(&peer, &format!("{APP_IP}:9100"), b"t").unwrap(),
        b"tbye"
    );
    assert_eq!(app_echo.load(SeqCst), 1);
    assert_eq!(
        stat(
            &app,
            admin,
            "tcp.InboundPassthroughCluster.downstream_cx_total"
        ),
        1
    );
    drop(sidecar);
    sh(&format!("ip netns exec {app} {bin} iptables --cleanup")).unwrap();
    let left = sh(&format!(
        "ip netns exec {app} iptables-save; ip netns exec {app} ip rule"
    ))
    .unwrap();
    assert!(
        !left.contains("ISTIO") && !left.contains("lookup 133"),
        "{left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captured_traffic_goes_through_the_sidecar() {
    let Some(ns) = namespaces("captured_traffic_goes_through_the_sidecar", 'r') else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_ringside");
    let (app, peer) = (ns.app.clone(), ns.peer.clone());
    // The peer host: an HTTP server on 8080, echo servers on 7000 and 7100.
    let peer_http = Backend::start_on("peer", bind_in(&peer, &format!("{PEER_IP}:8080")));
    let (_, peer_echo) = echo_server(bind_in(&peer, &format!("{PEER_IP}:7000")));
    let (_, peer_excluded) = echo_server(bind_in(&peer, &format!("{PEER_IP}:7100")));
    let (_, peer_echo_7200) = echo_server(bind_in(&peer, &format!("{PEER_IP}:7200")));
    let (_, peer_echo6) = echo_server(bind_in(&peer, &format!("[{PEER_IP6}]:7000")));
    // The app host: HTTP on 9000, echo on 9100, a server-first protocol on 9200, and an
    // excluded port 9300.
    let app_http = Backend::start_on("app", bind_in(&app, "0.0.0.0:9000"));
    let (_, app_echo) = echo_server(bind_in(&app, "0.0.0.0:9100"));
    greeting_server(bind_in(&app, "0.0.0.0:9200"), b"220 app greets first\r\n");
    let (_, app_excluded) = echo_server(bind_in(&app, "0.0.0.0:9300"));

    // Capture rules, applied twice: the second run must leave the same rules.
    let apply = format!("ip netns exec {app} {bin} iptables --ipv6 -d 9300,15090,15021 -o 7100");
    sh(&apply).unwrap();
    let save = format!(
        "ip netns exec {app} iptables-save -t nat | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'"
    );
    let first = sh(&save).unwrap();
    sh(&apply).unwrap();
    assert_eq!(first, sh(&save).unwrap(), "applying twice is idempotent");
    let dry = sh(&format!(
        "{bin} iptables --ipv6 --dry-run -d 9300,15090,15021 -o 7100"
    ))
    .unwrap();
    // iptables-save writes rules in its own normal form; the dry run's rules are the
    // ones applied, one for one.
    let appended = |t: &str, tool: &str| {
        t.lines()
            .filter(|l| l.contains("-A ") && (tool.is_empty() || l.starts_with(tool)))
            .count()
    };
    assert_eq!(
        appended(&dry, "iptables "),
        appended(&first, ""),
        "dry run:\n{dry}\napplied:\n{first}"
    );
    let save6 = format!("ip netns exec {app} ip6tables-save -t nat");
    assert_eq!(
        appended(&dry, "ip6tables "),
        appended(&sh(&save6).unwrap(), "")
    );

    let sidecar = Sidecar::start(&app, &sidecar_config(false), &[]).await;
    let (admin, dir) = (sidecar.admin, sidecar.dir.clone());
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();

    // Outbound HTTP from the app: captured, handed to the 10.77.0.2_8080 listener.
    let out = http_get_from(&app, &format!("{PEER_IP}:8080"), "/out", "peer");
    assert!(out.contains("upstream peer /out"), "{out}\n{}", stderr());
    assert_eq!(
        stat(&app, admin, "http.outbound_8080.downstream_rq_total"),
        1,
        "{}",
        stderr()
    );
    assert_eq!(
        stat(&app, admin, "listener.0.0.0.0_15001.original_dst_restored"),
        1
    );
    assert_eq!(peer_http.seen.requests.load(SeqCst), 1);

    // Outbound raw TCP: no listener for 7000, so the passthrough chain connects to the
    // original destination (as uid 1337, not captured again).
    let out = exchange(&app, &format!("{PEER_IP}:7000"), b"opaque").unwrap();
    assert_eq!(out, b"opaquebye");
    assert_eq!(
        stat(&app, admin, "tcp.PassthroughCluster.downstream_cx_total"),
        1
    );
    assert_eq!(peer_echo.load(SeqCst), 1);

    // A hand-over listener on the wildcard address whose chain passes through: it
    // connects to the destination, which is not a loop back to itself.
    let out = exchange(&app, &format!("{PEER_IP}:7200"), b"handed").unwrap();
    assert_eq!(out, b"handedbye");
    assert_eq!(
        stat(&app, admin, "tcp.outbound_7200.downstream_cx_total"),
        1
    );
    assert_eq!(peer_echo_7200.load(SeqCst), 1);

    // The same over IPv6 (SO_ORIGINAL_DST for IPv6, ip6tables).
    let out = exchange(&app, &format!("[{PEER_IP6}]:7000"), b"six").unwrap();
    assert_eq!(out, b"sixbye");
    assert_eq!(
        stat(&app, admin, "listener.[::]_15001.original_dst_restored"),
        1
    );
    assert_eq!(
        stat(&app, admin, "tcp.PassthroughCluster.downstream_cx_total"),
        2
    );
    assert_eq!(peer_echo6.load(SeqCst), 1);

    // Traffic of uid 1337 itself is not captured (no loop): a client running as the
    // proxy's user reaches the peer directly.
    let direct = sh(&format!(
        "ip netns exec {app} setpriv --reuid=1337 --regid=1337 --clear-groups bash -c 'exec 3<>/dev/tcp/{PEER_IP}/7000; printf x >&3; head -c 1 <&3'"
    ))
    .unwrap();
    assert_eq!(direct, "x");
    assert_eq!(peer_echo.load(SeqCst), 2);
    assert_eq!(
        stat(&app, admin, "tcp.PassthroughCluster.downstream_cx_total"),
        2,
        "not looped through the proxy"
    );

    // An excluded outbound port bypasses the proxy.
    assert_eq!(
        exchange(&app, &format!("{PEER_IP}:7100"), b"x").unwrap(),
        b"xbye"
    );
    assert_eq!(peer_excluded.load(SeqCst), 1);
    assert_eq!(
        stat(&app, admin, "tcp.PassthroughCluster.downstream_cx_total"),
        2
    );

    // Inbound HTTP from the peer: captured to 15006, sniffed as HTTP, sent to the app
    // from 127.0.0.6.
    let out = http_get_from(&peer, &format!("{APP_IP}:9000"), "/in", "app");
    assert!(out.contains("upstream app /in"), "{out}\n{}", stderr());
    assert_eq!(
        stat(&app, admin, "http.inbound_http.downstream_rq_total"),
        1
    );
    assert_eq!(app_http.seen.requests.load(SeqCst), 1);

    // Inbound opaque TCP: not HTTP, so the default chain.
    assert_eq!(
        exchange(&peer, &format!("{APP_IP}:9100"), b"\x00\x01raw").unwrap(),
        b"\x00\x01rawbye"
    );
    assert_eq!(
        stat(
            &app,
            admin,
            "tcp.InboundPassthroughCluster.downstream_cx_total"
        ),
        1
    );
    assert_eq!(app_echo.load(SeqCst), 1);

    // A server-first protocol on a port with its own chain: the greeting comes at once,
    // though the listener sniffs other ports with no timeout.
    let hello = read_first(&peer, &format!("{APP_IP}:9200"), 22).unwrap();
    assert_eq!(hello, b"220 app greets first\r\n");
    assert_eq!(stat(&app, admin, "tcp.inbound_9200.downstream_cx_total"), 1);

    // An excluded inbound port is not captured.
    assert_eq!(
        exchange(&peer, &format!("{APP_IP}:9300"), b"y").unwrap(),
        b"ybye"
    );
    assert_eq!(app_excluded.load(SeqCst), 1);
    assert_eq!(
        stat(&app, admin, "listener.0.0.0.0_15006.downstream_cx_total"),
        3
    );

    // A direct connection to 15001 (nothing to restore) is refused, not looped.
    let looped = exchange(&app, "127.0.0.1:15001", b"loop?").unwrap_or_default();
    assert!(looped.is_empty());
    assert_eq!(
        stat(&app, admin, "tcp.BlackHoleCluster.downstream_cx_total"),
        1
    );

    drop(sidecar);

    // Cleanup removes every rule it added.
    sh(&format!("ip netns exec {app} {bin} iptables --cleanup")).unwrap();
    let left = sh(&format!(
        "ip netns exec {app} iptables-save; ip netns exec {app} ip6tables-save"
    ))
    .unwrap();
    assert!(!left.contains("ISTIO"), "{left}");
    // And traffic flows directly again.
    assert_eq!(
        exchange(&app, &format!("{PEER_IP}:7000"), b"z").unwrap(),
        b"zbye"
    );
    drop(ns);
}
