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
