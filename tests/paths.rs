//! The connection manager's path normalisation (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`) over HTTP/1.1 and HTTP/2 on both drivers: what
//! routes and the upstream see, Envoy's 400 and 307 answers, and the gRPC shape of the
//! proxy's own answers to gRPC requests. `tests/interop/envoy_parity.py` compares the same
//! rules path by path with the Envoy 1.40 binary.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_over_both_codecs() {
    let backend = Backend::start("b").await;
    let hcm = "          codec_type: AUTO
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT";
    let vhosts = "[{name: all, domains: ['*'], routes: [
  {match: {prefix: /admin}, direct_response: {status: 403, body: {inline_string: admin}}},
  {match: {prefix: /}, route: {cluster: b}}]}]";
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    let grpc = [("content-type", "application/grpc")];
    for driver in drivers() {
        let proxy = Proxy::start(&config(hcm, vhosts, &clusters), &one_core(driver)).await;
        let addr = proxy.addr();
        for h2 in [false, true] {
            let what = format!("{driver}, h2={h2}");
            // Dot segments are resolved before routing: a public prefix cannot climb
            // onto a route the proxy guards.
            let (s, _, body) = send(addr, h2, "GET", "/public/%2e%2E/admin", &[]).await;
            assert_eq!((s, &body[..]), (403, &b"admin"[..]), "{what}");
            // The upstream gets the normalised path; the query is left alone.
            let (s, _, body) = send(addr, h2, "GET", "/a/./b//c/%7e%41?q=/../x", &[]).await;
            assert_eq!(s, 200, "{what}");
            assert_eq!(
                String::from_utf8_lossy(&body),
                "upstream b /a/b/c/~A",
                "{what}"
            );
            // An encoded NUL cannot be normalised: 400, no body.
            let (s, _, body) = send(addr, h2, "GET", "/a%00b", &[]).await;
            assert_eq!((s, body.len()), (400, 0), "{what}");
            // Escaped slashes: a redirect to the unescaped path ...
            let (s, h, _) = send(addr, h2, "GET", "/x/a%2Fb", &[]).await;
            assert_eq!(s, 307, "{what}");
            assert_eq!(header(&h, "location"), Some("/x/a/b"), "{what}");
            // ... which a gRPC client cannot follow: INTERNAL instead.
            let (s, h, _) = send(addr, h2, "POST", "/x/a%2Fb", &grpc).await;
            assert_eq!(s, 200, "{what}");
            assert_eq!(header(&h, "grpc-status"), Some("13"), "{what}");
            // The proxy's own answers to gRPC requests are gRPC-shaped: 403 is
            // PERMISSION_DENIED, the body becomes grpc-message.
            let (s, h, body) = send(addr, h2, "POST", "/admin", &grpc).await;
            assert_eq!((s, body.len()), (200, 0), "{what}");
            assert_eq!(
                header(&h, "content-type"),
                Some("application/grpc"),
                "{what}"
            );
            assert_eq!(header(&h, "grpc-status"), Some("7"), "{what}");
            assert_eq!(header(&h, "grpc-message"), Some("admin"), "{what}");
        }
        let stat = |s: &'static str| {
            let proxy = &proxy;
            async move { proxy.stat(&format!("http.ingress.{s}")).await }
        };
        assert_eq!(
            stat("downstream_rq_failed_path_normalization").await,
            4,
            "{driver}"
        );
        assert_eq!(
            stat("downstream_rq_redirected_with_normalized_path").await,
            2,
            "{driver}"
        );
    }
}

/// A fragment is refused (400) by default; Istio's bootstrap sets the runtime key
/// `envoy.reloadable_features.http_reject_path_with_fragment: false`, and then the
/// fragment is dropped and the request forwarded, as Envoy does. `/runtime` shows the
/// layers and `/runtime_modify` changes the admin layer at once for new requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_decides_whether_a_fragment_is_refused_or_dropped() {
    let backend = Backend::start("b").await;
    let runtime = r#"layered_runtime:
  layers:
  - name: global config
    static_layer: {"envoy.reloadable_features.http_reject_path_with_fragment": false, "a": {"b": 1}}
  - name: admin
    admin_layer: {}
"#;
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    let yaml = format!("{runtime}{}", config("", &all_to("b"), &clusters));
    let key = "envoy.reloadable_features.http_reject_path_with_fragment";
    for driver in drivers() {
        let proxy = Proxy::start(&yaml, &one_core(driver)).await;
        let addr = proxy.addr();
        let get = |path: &'static str| async move {
            let out = raw(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
                std::time::Duration::from_millis(500),
            )
            .await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let out = get("/a/b#frag?x").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{driver}: {out}");
        assert!(out.ends_with("upstream b /a/b"), "{driver}: {out}");
        let (s, body) = proxy.admin_get("/runtime").await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["layers"], serde_json::json!(["global config", "admin"]));
        assert_eq!(v["entries"][key]["final_value"], "false", "{body}");
        assert_eq!(
            v["entries"]["a.b"]["layer_values"],
            serde_json::json!(["1", ""])
        );
        // The admin layer overrides the static one for the next requests.
        let (s, _, _) = request(
            proxy.admin,
            "POST",
            &format!("/runtime_modify?{key}=true"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(s, 200);
        let out = get("/a/b#frag").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{driver}: {out}");
        let (_, body) = proxy.admin_get("/runtime").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["entries"][key]["layer_values"],
            serde_json::json!(["false", "true"])
        );
    }
}
