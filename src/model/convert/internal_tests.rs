//! Internal listeners, internal endpoints, `internal_upstream`, the TCP proxy's tunneling
//! and Istio's HBONE filters: accepted as Envoy and istio-proxy accept them, refused by
//! name where they cannot be honoured.

use super::tests::build;

const EXT: &str = "bootstrap_extensions: [{name: envoy.bootstrap.internal_listener, typed_config: {'@type': type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener}}]\n";

const TCP: &str = "{name: tcp, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}";

fn config(ext: bool, listener: &str, cluster: &str) -> String {
    format!(
        "{}static_resources:\n  listeners: [{listener}]\n  clusters: [{cluster}]\n",
        if ext { EXT } else { "" }
    )
}

fn internal_cluster(socket: &str) -> String {
    format!(
        "{{name: c, {socket} load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: inner, endpoint_id: '10.0.0.1:80'}}}}}}, metadata: {{filter_metadata: {{envoy.filters.listener.original_dst: {{local: '10.0.0.1:80'}}}}}}}}]}}]}}}}"
    )
}

const PASSTHROUGH: &str = "transport_socket: {name: internal_upstream, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport, passthrough_metadata: [{kind: {host: {}}, name: envoy.filters.listener.original_dst}, {kind: {cluster: {}}, name: istio}], transport_socket: {name: raw_buffer, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}},";

fn inner(filters: &str) -> String {
    format!("{{name: inner, internal_listener: {{}}, listener_filters: [{filters}], filter_chains: [{{filters: [{TCP}]}}]}}")
}

#[test]
fn internal_listeners_need_the_bootstrap_extension() {
    let l = inner("");
    let e = build(&config(false, &l, &internal_cluster(""))).unwrap_err();
    assert_eq!(e.path, "static_resources.listeners[0].internal_listener");
    assert!(
        e.reason.contains("envoy.bootstrap.internal_listener"),
        "{e}"
    );
    let s = build(&config(true, &l, &internal_cluster(""))).unwrap();
    let listener = &s.listeners[0];
    assert_eq!(
        listener.internal,
        Some(crate::model::internal::Restore::None)
    );
    assert!(!listener.bind_to_port);
    assert!(crate::model::internal::is_synthetic(&listener.address));
    // Nothing finds an internal listener by address.
    assert!(s.virtual_listeners.is_empty());
}

#[test]
fn an_internal_listener_has_no_socket() {
    let with = |extra: &str| {
        config(
            true,
            &format!("{{name: inner, internal_listener: {{}}, {extra} filter_chains: [{{filters: [{TCP}]}}]}}"),
            &internal_cluster(""),
        )
    };
    let e = build(&with("use_original_dst: true,")).unwrap_err();
    assert!(e.path.ends_with("use_original_dst"), "{e}");
    let e = build(&with(
        "address: {socket_address: {address: 127.0.0.1, port_value: 1}},",
    ))
    .unwrap_err();
    assert!(e.path.ends_with("address"), "{e}");
    build(&with(
        "address: {envoy_internal_address: {server_listener_name: inner}},",
    ))
    .unwrap();
}

#[test]
fn listener_filters_choose_how_the_destination_is_restored() {
    use crate::model::internal::Restore;
    let od = "{name: od, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}";
    let istio = "{name: set_dst_address, typed_config: {'@type': type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/istio.set_internal_dst_address.v1.Config}}";
    let s = build(&config(true, &inner(od), &internal_cluster(""))).unwrap();
    assert_eq!(s.listeners[0].internal, Some(Restore::OriginalDst));
    // An internal connection has no SO_ORIGINAL_DST to read.
    assert!(!s.listeners[0].restore_dst);
    let s = build(&config(true, &inner(istio), &internal_cluster(""))).unwrap();
    assert_eq!(s.listeners[0].internal, Some(Restore::IstioTunnel));
    // Istio's filter reads what only an internal connection carries.
    let bound = format!("{{name: b, address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}, listener_filters: [{istio}], filter_chains: [{{filters: [{TCP}]}}]}}");
    let e = build(&config(true, &bound, &internal_cluster(""))).unwrap_err();
    assert!(e.reason.contains("internal listeners only"), "{e}");
}

#[test]
fn internal_endpoints_and_their_passthrough() {
    let s = build(&config(
        true,
        &inner(""),
        &internal_cluster(PASSTHROUGH).replace(
            "{name: c,",
            "{name: c, metadata: {filter_metadata: {istio: {x: y}}},",
        ),
    ))
    .unwrap();
    let c = &s.clusters[0];
    let ep = &c.endpoints[0];
    let i = ep.internal.as_ref().expect("an internal endpoint");
    assert_eq!(&*i.listener, "inner");
    assert_eq!(&*i.display, "envoy://inner/10.0.0.1:80");
    assert!(crate::model::internal::is_synthetic(&ep.address));
    let p = c.passthrough_for(ep).expect("internal_upstream");
    let hello = p.hello(Some(i), Vec::new());
    assert_eq!(hello.missing, 0);
    assert_eq!(hello.metadata_str("istio", "x"), Some("y"));
    assert_eq!(
        crate::model::internal::Restore::OriginalDst
            .apply(&hello)
            .local,
        Some("10.0.0.1:80".parse().unwrap())
    );
    // Wrapping anything but a transport socket it knows is refused by path.
    let bad = PASSTHROUGH.replace("name: raw_buffer, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}", "name: x");
    let e = build(&config(true, &inner(""), &internal_cluster(&bad))).unwrap_err();
    assert!(
        e.path
            .ends_with("typed_config.transport_socket.typed_config"),
        "{e}"
    );
    // Internal endpoints need STATIC or EDS clusters.
    let dns = internal_cluster("type: STRICT_DNS,");
    let e = build(&config(true, &inner(""), &dns)).unwrap_err();
    assert!(
        e.path.ends_with("endpoint.address.envoy_internal_address"),
        "{e}"
    );
}

#[test]
fn tunneling_config_and_original_dst_lb_config() {
    let tunnel = |cfg: &str| {
        let l = format!("{{name: o, address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}, filter_chains: [{{filters: [{{name: tcp, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c, tunneling_config: {cfg}}}}}]}}]}}");
        config(true, &l, "{name: c, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, original_dst_lb_config: {upstream_port_override: 15008, metadata_key: {key: envoy.filters.listener.original_dst, path: [{key: waypoint}]}}}")
    };
    let s = build(&tunnel("{hostname: '%DOWNSTREAM_LOCAL_ADDRESS%', headers_to_add: [{header: {key: baggage, value: k=v}}]}")).unwrap();
    let c = &s.clusters[0];
    assert_eq!(c.original_dst.port_override, Some(15008));
    assert_eq!(
        c.original_dst
            .metadata_key
            .as_ref()
            .map(|(a, b)| (&**a, &**b)),
        Some(("envoy.filters.listener.original_dst", "waypoint"))
    );
    let e = build(&tunnel("{hostname: h, post_path: /x}")).unwrap_err();
    assert!(e.path.ends_with("tunneling_config.post_path"), "{e}");
    let e = build(&tunnel(
        "{hostname: h, headers_to_add: [{header: {key: ':authority', value: x}}]}",
    ))
    .unwrap_err();
    assert!(
        e.path
            .ends_with("tunneling_config.headers_to_add[0].header.key"),
        "{e}"
    );
    let e = build(&tunnel("{}")).unwrap_err();
    assert!(e.path.ends_with("tunneling_config.hostname"), "{e}");
}
