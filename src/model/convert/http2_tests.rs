//! HTTP/2 settings and the clusters' HTTP protocol options (split from `tests.rs`).

use super::tests::{build, with_routes};

fn with_http2(hcm: &str, cluster: &str) -> String {
    with_routes(r#"[{match: {prefix: "/"}, route: {cluster: backend}}]"#)
        .replace(
            "stat_prefix: t",
            &format!("stat_prefix: t\n          {hcm}"),
        )
        .replace("[{name: backend,", &format!("[{{name: backend, {cluster}"))
}

#[test]
fn http2_flood_bounds_downstream_and_refused_upstream() {
    let s = build(&with_http2(
        "http2_protocol_options: {max_outbound_control_frames: 50, max_inbound_priority_frames_per_stream: 0}",
        "",
    ))
    .unwrap();
    let h = s.listeners[0].hcms().next().unwrap();
    let d = crate::model::FloodLimits::default();
    assert_eq!(h.http2.flood.max_outbound_control_frames, 50);
    assert_eq!(h.http2.flood.max_priority_frames_per_stream, 0);
    assert_eq!(h.http2.flood.max_outbound_frames, d.max_outbound_frames);
    assert_eq!(d.max_outbound_frames, 10_000);
    assert_eq!(d.max_consecutive_empty_frames, 1);
    let e = build(&with_http2(
        "",
        "http2_protocol_options: {max_outbound_frames: 5},",
    ))
    .unwrap_err();
    assert!(
        e.path
            .ends_with("http2_protocol_options.max_outbound_frames"),
        "{}",
        e.path
    );
    assert!(
        e.reason.contains("downstream connections only"),
        "{}",
        e.reason
    );
}

#[test]
fn http2_codec_and_settings() {
    let s = build(&with_http2(
        "codec_type: HTTP2\n          http2_protocol_options: {max_concurrent_streams: 7}",
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {initial_stream_window_size: 70000}}}},",
    ))
    .unwrap();
    let h = s.listeners[0]
        .hcms()
        .next()
        .expect("an HTTP connection manager");
    assert_eq!(h.codec, crate::model::Codec::Http2);
    let d = crate::model::Http2Settings::default();
    assert_eq!(h.http2.max_concurrent_streams, 7);
    assert_eq!(
        h.http2.initial_stream_window_size,
        d.initial_stream_window_size
    );
    let up = s.clusters[0].http2.expect("the cluster speaks HTTP/2");
    assert_eq!(up.initial_stream_window_size, 70000);
    assert!(!s.clusters[0].http2_follows_downstream);
    // use_downstream_protocol_config: HTTP/2 for HTTP/2 clients only.
    let s = build(&with_http2(
        "",
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, use_downstream_protocol_config: {http2_protocol_options: {max_concurrent_streams: 9}}}},",
    ))
    .unwrap();
    assert!(s.clusters[0].http2_follows_downstream);
    assert_eq!(s.clusters[0].http2.unwrap().max_concurrent_streams, 9);
    assert_eq!(up.max_concurrent_streams, d.max_concurrent_streams);

    // Envoy's bounds, with the field named.
    let e = build(&with_http2(
        "http2_protocol_options: {initial_connection_window_size: 1000}",
        "",
    ))
    .unwrap_err();
    assert!(
        e.path
            .ends_with("http2_protocol_options.initial_connection_window_size"),
        "{}",
        e.path
    );
    assert!(e.reason.contains("1000 is outside 65535"), "{}", e.reason);
    let e = build(&with_http2(
        "",
        "http2_protocol_options: {max_concurrent_streams: 0},",
    ))
    .unwrap_err();
    assert!(
        e.path
            .ends_with("http2_protocol_options.max_concurrent_streams"),
        "{}",
        e.path
    );
    // max_requests_per_connection counts HTTP/2 streams too; the deprecated cluster-level
    // field is the same setting, and Envoy refuses both at once.
    let s = build(&with_http2(
        "",
        "http2_protocol_options: {}, max_requests_per_connection: 3,",
    ))
    .unwrap();
    assert_eq!(
        s.cluster("backend").unwrap().max_requests_per_connection,
        Some(3)
    );
    let e = build(&with_http2("", "max_requests_per_connection: 3, common_http_protocol_options: {max_requests_per_connection: 3},")).unwrap_err();
    assert!(e.reason.contains("Only one of"), "{}", e.reason);
    // istiod's location: the typed HttpProtocolOptions' common options, the same settings;
    // not both places at once, and what clusters do not implement is named.
    let typed = |common: &str| {
        format!("typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {{{common}}}, explicit_http_config: {{http2_protocol_options: {{}}}}}}}},")
    };
    let s = build(&with_http2(
        "",
        &typed("idle_timeout: 7s, max_requests_per_connection: 4"),
    ))
    .unwrap();
    let c = s.cluster("backend").unwrap();
    assert_eq!(c.max_requests_per_connection, Some(4));
    assert_eq!(c.idle_timeout, Some(std::time::Duration::from_secs(7)));
    assert!(c.http2.is_some());
    let both = format!(
        "common_http_protocol_options: {{idle_timeout: 1s}}, {}",
        typed("idle_timeout: 2s")
    );
    let e = build(&with_http2("", &both)).unwrap_err();
    assert!(
        e.path.ends_with(".common_http_protocol_options"),
        "{}",
        e.path
    );
    assert!(e.reason.contains("one place"), "{}", e.reason);
    let s = build(&with_http2(
        "",
        &typed("max_connection_duration: 5s, max_headers_count: 7"),
    ))
    .unwrap();
    let c = s.cluster("backend").unwrap();
    assert_eq!(
        c.max_connection_duration,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(c.max_headers_count, 7);
    let e = build(&with_http2("", &typed("max_headers_count: 0"))).unwrap_err();
    assert!(
        e.path
            .ends_with("common_http_protocol_options.max_headers_count"),
        "{}",
        e.path
    );
}
