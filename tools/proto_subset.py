#!/usr/bin/env python3
"""Writes proto/ : the subset of Envoy's v3 API that Ringside implements.

The field list below is the hand-kept part: a field is listed only when Ringside
implements it (or lists it in docs/configuration.md's table of ignorable knobs). Names,
numbers, types and packages are read from Envoy's official descriptors (PyPI's
`xds-protos`), so the subset stays wire-compatible with real control planes.

    pip install xds-protos && python3 tools/proto_subset.py
"""
import importlib
import os
import sys

from google.protobuf import descriptor as d

# message full name -> fields kept ("*" keeps every field; nested enums are always complete).
SUBSET = {
    # core
    "envoy.config.core.v3.SocketAddress": ["protocol", "address", "port_value", "ipv4_compat"],
    "envoy.config.core.v3.Pipe": ["path", "mode"],
    "envoy.config.core.v3.Address": ["socket_address", "pipe", "envoy_internal_address"],
    "envoy.config.core.v3.EnvoyInternalAddress": ["server_listener_name", "endpoint_id"],
    "envoy.config.core.v3.Locality": ["*"],
    "envoy.config.core.v3.Node": ["id", "cluster", "metadata", "locality", "user_agent_name",
                                  "user_agent_version"],
    "envoy.config.core.v3.Metadata": ["filter_metadata"],
    "envoy.config.core.v3.HeaderValue": ["key", "value", "raw_value"],
    "envoy.config.core.v3.HeaderValueOption": ["header", "append", "append_action", "keep_empty_value"],
    "envoy.config.core.v3.DataSource": ["filename", "inline_bytes", "inline_string",
                                        "environment_variable"],
    "envoy.config.core.v3.HttpProtocolOptions": ["idle_timeout", "max_connection_duration",
                                                 "max_headers_count", "max_requests_per_connection",
                                                 "headers_with_underscores_action"],
    "envoy.config.core.v3.Http1ProtocolOptions": ["accept_http_10", "default_host_for_http_10"],
    "envoy.config.core.v3.SubstitutionFormatString": ["text_format", "json_format",
                                                      "text_format_source",
                                                      "omit_empty_values",
                                                      "json_format_options"],
    "envoy.config.core.v3.JsonFormatOptions": ["*"],
    # bootstrap
    "envoy.config.bootstrap.v3.Bootstrap": ["node", "static_resources", "dynamic_resources",
                                            "admin", "layered_runtime", "application_log_config",
                                            "cluster_manager", "deferred_stat_options",
                                            "overload_manager", "bootstrap_extensions",
                                            "stats_config", "tracing", "stats_sinks",
                                            "stats_flush_interval", "stats_flush_on_admin"],
    # Which stats exist and how /stats/prometheus names and labels them.
    "envoy.config.metrics.v3.StatsConfig": ["stats_tags", "use_all_default_tags", "stats_matcher"],
    "envoy.config.metrics.v3.TagSpecifier": ["*"],
    # Stat sinks: statsd over UDP; the others are refused by name.
    "envoy.config.metrics.v3.StatsSink": ["name", "typed_config"],
    "envoy.config.metrics.v3.StatsdSink": ["address", "tcp_cluster_name", "prefix"],
    # The metrics service sink; the service and Prometheus' model are hand-written in
    # proto/envoy/service/metrics and proto/io/prometheus (xds-protos leaves them out).
    "envoy.config.metrics.v3.MetricsServiceConfig": ["*"],
    "envoy.config.metrics.v3.StatsMatcher": ["*"],
    "envoy.type.matcher.v3.ListStringMatcher": ["patterns"],
    "envoy.config.core.v3.TypedExtensionConfig": ["name", "typed_config"],
    # Istio wraps its own extensions' configurations in TypedStructs.
    "udpa.type.v1.TypedStruct": ["*"],
    "xds.type.v3.TypedStruct": ["*"],
    # Only the global connection limit monitor; overload actions are refused by name.
    "envoy.config.overload.v3.OverloadManager": ["refresh_interval", "resource_monitors"],
    "envoy.config.overload.v3.ResourceMonitor": ["name", "typed_config"],
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": ["*"],
    # Tuning knobs (docs/configuration.md, ignored fields); what would change behaviour stays refused.
    "envoy.config.bootstrap.v3.ClusterManager": ["outlier_detection",
                                                 "enable_deferred_cluster_creation"],
    "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection": ["event_log_path"],
    "envoy.config.bootstrap.v3.Bootstrap.DeferredStatOptions": ["*"],
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig": ["log_format"],
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig.LogFormat": ["*"],
    "envoy.config.bootstrap.v3.LayeredRuntime": ["*"],
    "envoy.config.bootstrap.v3.RuntimeLayer": ["*"],
    "envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer": [],
    "envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer": [],
    "envoy.config.bootstrap.v3.RuntimeLayer.RtdsLayer": [],
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources": ["lds_config", "cds_config",
                                                             "ads_config"],
    # xDS sources
    "envoy.config.core.v3.ConfigSource": ["ads", "api_config_source", "initial_fetch_timeout",
                                          "resource_api_version", "path", "path_config_source"],
    "envoy.config.core.v3.PathConfigSource": ["path", "watched_directory"],
    "envoy.config.core.v3.WatchedDirectory": ["path"],
    "envoy.config.core.v3.AggregatedConfigSource": [],
    "envoy.config.core.v3.ApiConfigSource": ["api_type", "transport_api_version", "grpc_services",
                                             "set_node_on_first_message_only"],
    "envoy.config.core.v3.GrpcService": ["envoy_grpc", "timeout", "initial_metadata"],
    "envoy.config.core.v3.GrpcService.EnvoyGrpc": ["cluster_name", "authority"],
    "envoy.service.discovery.v3.DiscoveryRequest": ["version_info", "node", "resource_names",
                                                    "type_url", "response_nonce", "error_detail"],
    "envoy.service.discovery.v3.DiscoveryResponse": ["version_info", "resources", "type_url",
                                                     "nonce"],
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": [
        "node", "type_url", "resource_names_subscribe", "resource_names_unsubscribe",
        "initial_resource_versions", "response_nonce", "error_detail"],
    "envoy.service.discovery.v3.DeltaDiscoveryResponse": [
        "system_version_info", "resources", "type_url", "removed_resources", "nonce"],
    "envoy.service.discovery.v3.Resource": ["name", "aliases", "version", "resource"],
    "google.rpc.Status": ["code", "message", "details"],
    # upstream protocol options
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": ["common_http_protocol_options",
                                                              "explicit_http_config",
                                                              "use_downstream_protocol_config"],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig": [
        "http_protocol_options", "http2_protocol_options"],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": [
        "http_protocol_options", "http2_protocol_options"],
    "envoy.config.core.v3.Http2ProtocolOptions": ["max_concurrent_streams",
                                                  "initial_stream_window_size",
                                                  "initial_connection_window_size",
                                                  "max_outbound_frames", "max_outbound_control_frames",
                                                  "max_consecutive_inbound_frames_with_empty_payload",
                                                  "max_inbound_priority_frames_per_stream",
                                                  "max_inbound_window_update_frames_per_data_frame_sent",
                                                  "allow_connect"],
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources": ["listeners", "clusters"],
    "envoy.config.bootstrap.v3.Admin": ["address", "access_log", "profile_path"],
    # listener
    "envoy.config.listener.v3.Listener": ["name", "address", "filter_chains", "stat_prefix",
                                          "per_connection_buffer_limit_bytes", "enable_reuse_port",
                                          "traffic_direction", "connection_balance_config",
                                          "listener_filters", "listener_filters_timeout",
                                          "continue_on_listener_filters_timeout",
                                          "use_original_dst", "bind_to_port", "transparent",
                                          "default_filter_chain", "filter_chain_matcher", "ignore_global_conn_limit",
                                          "bypass_overload_manager", "internal_listener"],
    "envoy.config.listener.v3.Listener.InternalListenerConfig": [],
    "envoy.config.listener.v3.Listener.ConnectionBalanceConfig": ["exact_balance"],
    "envoy.config.listener.v3.Listener.ConnectionBalanceConfig.ExactBalance": [],
    "envoy.config.listener.v3.FilterChain": ["filters", "name", "filter_chain_match",
                                             "transport_socket",
                                             "transport_socket_connect_timeout"],
    "envoy.config.listener.v3.FilterChainMatch": [
        "destination_port", "prefix_ranges", "direct_source_prefix_ranges", "source_type",
        "source_prefix_ranges", "source_ports", "server_names", "transport_protocol",
        "application_protocols"],
    "envoy.config.core.v3.CidrRange": ["address_prefix", "prefix_len"],
    "envoy.config.listener.v3.ListenerFilter": ["name", "typed_config", "filter_disabled"],
    "envoy.config.listener.v3.ListenerFilterChainMatchPredicate": [
        "or_match", "and_match", "not_match", "any_match", "destination_port_range"],
    "envoy.config.listener.v3.ListenerFilterChainMatchPredicate.MatchSet": ["rules"],
    "envoy.type.v3.Int32Range": ["start", "end"],
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst": [],
    # initial_read_buffer_size is a tuning knob (docs/configuration.md, ignored fields).
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": ["initial_read_buffer_size"],
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": [],
    # filter_chain_matcher (the unified matcher on network inputs)
    "xds.type.matcher.v3.Matcher": ["matcher_tree", "on_no_match"],
    "xds.type.matcher.v3.Matcher.OnMatch": ["matcher", "action"],
    "xds.type.matcher.v3.Matcher.MatcherTree": ["input", "exact_match_map", "prefix_match_map",
                                                "custom_match"],
    "xds.type.matcher.v3.Matcher.MatcherTree.MatchMap": ["map"],
    "xds.core.v3.TypedExtensionConfig": ["name", "typed_config"],
    "xds.type.matcher.v3.IPMatcher": ["range_matchers"],
    "xds.type.matcher.v3.IPMatcher.IPRangeMatcher": ["ranges", "on_match", "exclusive"],
    "xds.core.v3.CidrRange": ["address_prefix", "prefix_len"],
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.SourceTypeInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput": [],
    "envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput": [],
    # TCP proxy
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": [
        "stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts",
        "max_downstream_connection_duration", "access_log", "hash_policy",
        "tunneling_config"],
    # HBONE: the TCP proxy's HTTP CONNECT (or POST) tunnel.
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig": [
        "hostname", "use_post", "headers_to_add", "post_path"],
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer": [],
    # The bootstrap extension that enables internal listeners (its buffer size is a
    # tuning knob: an internal connection is a socket pair with the kernel's buffers).
    "envoy.extensions.bootstrap.internal_listener.v3.InternalListener": ["buffer_size_kb"],
    # The internal upstream transport: an internal endpoint's metadata passed to the
    # internal listener's connection, around a plaintext socket.
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport": [
        "passthrough_metadata", "transport_socket"],
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport.MetadataValueSource": [
        "kind", "name"],
    # The TCP proxy's consistent-hash key: the source IP (Istio's useSourceIp) or a
    # hashable filter state object.
    "envoy.type.v3.HashPolicy": ["source_ip", "filter_state"],
    "envoy.type.v3.HashPolicy.SourceIp": [],
    "envoy.type.v3.HashPolicy.FilterState": ["key"],
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster": ["clusters"],
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": [
        "name", "weight"],
    "envoy.config.listener.v3.Filter": ["name", "typed_config"],
    # access log
    "envoy.config.accesslog.v3.AccessLog": ["name", "filter", "typed_config"],
    "envoy.config.accesslog.v3.AccessLogFilter": ["*"],
    "envoy.config.accesslog.v3.ComparisonFilter": ["*"],
    "envoy.config.accesslog.v3.StatusCodeFilter": ["*"],
    "envoy.config.accesslog.v3.DurationFilter": ["*"],
    "envoy.config.accesslog.v3.NotHealthCheckFilter": ["*"],
    "envoy.config.accesslog.v3.TraceableFilter": ["*"],
    "envoy.config.accesslog.v3.RuntimeFilter": ["*"],
    "envoy.config.accesslog.v3.AndFilter": ["*"],
    "envoy.config.accesslog.v3.OrFilter": ["*"],
    "envoy.config.accesslog.v3.HeaderFilter": ["*"],
    "envoy.config.accesslog.v3.ResponseFlagFilter": ["*"],
    "envoy.config.accesslog.v3.GrpcStatusFilter": ["*"],
    "envoy.config.accesslog.v3.MetadataFilter": ["*"],
    "envoy.config.accesslog.v3.LogTypeFilter": ["*"],
    "envoy.config.accesslog.v3.ExtensionFilter": ["name", "typed_config"],
    "envoy.config.core.v3.RuntimeUInt32": ["*"],
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig": [
        "common_config", "disable_builtin_labels", "resource_attributes", "body", "attributes",
        "stat_prefix"],
    "envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig": [
        "log_name", "grpc_service", "transport_api_version", "buffer_flush_interval",
        "buffer_size_bytes", "filter_state_objects_to_log"],
    # OTLP's common types (unchanged since OTLP 0.x); logs.proto and the collector service
    # are hand-written in proto/opentelemetry with today's names (the PyPI descriptors are
    # older).
    "opentelemetry.proto.common.v1.AnyValue": ["*"],
    "opentelemetry.proto.common.v1.ArrayValue": ["*"],
    "opentelemetry.proto.common.v1.KeyValueList": ["*"],
    "opentelemetry.proto.common.v1.KeyValue": ["*"],
    "opentelemetry.proto.resource.v1.Resource": ["*"],
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": ["log_format"],
    "envoy.extensions.access_loggers.file.v3.FileAccessLog": ["path", "log_format", "format",
                                                              "json_format", "typed_json_format"],
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog": ["log_format"],
    # HTTP connection manager
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": [
        "codec_type", "stat_prefix", "route_config", "http_filters", "access_log",
        "common_http_protocol_options", "http_protocol_options", "use_remote_address",
        "xff_num_trusted_hops", "internal_address_config", "skip_xff_append", "via", "generate_request_id",
        "preserve_external_request_id", "always_set_request_id_in_response", "server_name",
        "server_header_transformation", "stream_idle_timeout", "request_timeout",
        "request_headers_timeout", "drain_timeout", "max_request_headers_kb",
        "strip_matching_host_port", "strip_any_host_port", "rds", "upgrade_configs",
        "http2_protocol_options", "normalize_path", "merge_slashes",
        "path_with_escaped_slashes_action", "tracing", "request_id_extension",
        "forward_client_cert_details", "set_current_client_cert_details"],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails": ["*"],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing": [
        "client_sampling", "random_sampling", "overall_sampling", "verbose", "max_path_tag_length",
        "custom_tags", "spawn_upstream_span", "provider"],
    # Span export: Zipkin (JSON v2 over HTTP) and OpenTelemetry (OTLP over gRPC).
    "envoy.config.trace.v3.Tracing": ["http"],
    "envoy.config.trace.v3.Tracing.Http": ["name", "typed_config"],
    "envoy.config.trace.v3.ZipkinConfig": ["collector_cluster", "collector_endpoint",
                                           "trace_id_128bit", "shared_span_context",
                                           "collector_endpoint_version", "collector_hostname",
                                           "split_spans_for_request", "trace_context_option"],
    "envoy.config.trace.v3.OpenTelemetryConfig": ["grpc_service", "service_name"],
    "envoy.extensions.filters.network.http_connection_manager.v3.RequestIDExtension": ["typed_config"],
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig": ["*"],
    "envoy.type.v3.Percent": ["*"],
    "envoy.type.tracing.v3.CustomTag": ["*"],
    "envoy.type.tracing.v3.CustomTag.Literal": ["*"],
    "envoy.type.tracing.v3.CustomTag.Environment": ["*"],
    "envoy.type.tracing.v3.CustomTag.Header": ["*"],
    "envoy.type.tracing.v3.CustomTag.Metadata": ["*"],
    "envoy.type.metadata.v3.MetadataKind": ["*"],
    "envoy.type.metadata.v3.MetadataKind.Request": ["*"],
    "envoy.type.metadata.v3.MetadataKind.Route": ["*"],
    "envoy.type.metadata.v3.MetadataKind.Cluster": ["*"],
    "envoy.type.metadata.v3.MetadataKind.Host": ["*"],
    "envoy.type.metadata.v3.MetadataKey": ["*"],
    "envoy.type.metadata.v3.MetadataKey.PathSegment": ["*"],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": [
        "upgrade_type", "enabled"],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig": [
        "unix_sockets", "cidr_ranges"],
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds": ["config_source",
                                                                       "route_config_name"],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": ["name", "typed_config",
                                                                               "is_optional", "disabled"],
    # HTTP filters
    "envoy.extensions.filters.http.fault.v3.HTTPFault": [
        "delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults",
        "delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime",
        "abort_http_status_runtime", "max_active_faults_runtime", "abort_grpc_status_runtime",
        "disable_downstream_cluster_stats"],
    "envoy.extensions.filters.http.fault.v3.FaultAbort": ["*"],
    "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort": ["*"],
    "envoy.extensions.filters.common.fault.v3.FaultDelay": ["*"],
    "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay": ["*"],
    "envoy.extensions.filters.http.cors.v3.Cors": ["*"],
    "envoy.extensions.filters.http.cors.v3.CorsPolicy": ["*"],
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": [
        "emit_filter_state", "individual_method_stats_allowlist", "stats_for_all_methods",
        "enable_upstream_stats", "replace_dots_in_grpc_service_name"],
    "envoy.config.core.v3.GrpcMethodList": ["*"],
    "envoy.config.core.v3.GrpcMethodList.Service": ["*"],
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": [
        "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
        "request_headers_to_add_when_not_enforced", "response_headers_to_add",
        "local_rate_limit_per_downstream_connection", "enable_x_ratelimit_headers",
        "rate_limited_as_resource_exhausted"],
    # envoy.filters.http.compressor and its three libraries (the deprecated top-level fields
    # of Compressor are read as Envoy reads them: when the direction config leaves them unset).
    "envoy.extensions.filters.http.compressor.v3.Compressor": ["*"],
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig": ["*"],
    "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig": ["*"],
    "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig": ["*"],
    "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides": ["*"],
    "envoy.extensions.filters.http.compressor.v3.CompressorOverrides": ["*"],
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute": ["*"],
    "envoy.extensions.compression.gzip.compressor.v3.Gzip": ["*"],
    "envoy.extensions.compression.brotli.compressor.v3.Brotli": ["*"],
    "envoy.extensions.compression.zstd.compressor.v3.Zstd": ["*"],
    "envoy.config.core.v3.RuntimeFeatureFlag": ["*"],
    # RBAC (envoy.filters.http.rbac, envoy.filters.network.rbac): the grammar istiod
    # generates. CEL conditions, matcher trees, custom principals, audit logging, uri
    # templates and sourced metadata are left out, so they are refused by name.
    "envoy.config.rbac.v3.RBAC": ["action", "policies"],
    "envoy.config.rbac.v3.Policy": ["permissions", "principals"],
    "envoy.config.rbac.v3.Permission": ["and_rules", "or_rules", "any", "header", "url_path",
                                        "destination_ip", "destination_port",
                                        "destination_port_range", "metadata", "not_rule",
                                        "requested_server_name"],
    "envoy.config.rbac.v3.Permission.Set": ["rules"],
    "envoy.config.rbac.v3.Principal": ["and_ids", "or_ids", "any", "authenticated", "source_ip",
                                       "direct_remote_ip", "remote_ip", "header", "url_path",
                                       "metadata", "filter_state", "not_id"],
    "envoy.config.rbac.v3.Principal.Set": ["ids"],
    "envoy.config.rbac.v3.Principal.Authenticated": ["principal_name"],
    "envoy.extensions.filters.http.rbac.v3.RBAC": ["rules", "rules_stat_prefix", "shadow_rules",
                                                   "shadow_rules_stat_prefix"],
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute": ["rbac"],
    "envoy.extensions.filters.network.rbac.v3.RBAC": ["rules", "shadow_rules",
                                                      "shadow_rules_stat_prefix", "stat_prefix",
                                                      "enforcement_type"],
    # External authorization (Istio's CUSTOM action) over gRPC or HTTP. The HTTP service's
    # retry policy and the rarer knobs are left out, so they are refused by name.
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": [
        "grpc_service", "http_service", "transport_api_version", "failure_mode_allow",
        "failure_mode_allow_header_add", "status_on_error", "filter_enabled",
        "filter_enabled_metadata", "include_peer_certificate", "stat_prefix",
        "allowed_headers", "disallowed_headers", "include_tls_session", "with_request_body"],
    "envoy.extensions.filters.http.ext_authz.v3.BufferSettings": ["*"],
    "envoy.extensions.filters.http.ext_authz.v3.HttpService": [
        "server_uri", "path_prefix", "authorization_request", "authorization_response"],
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest": ["*"],
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse": ["*"],
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute": ["disabled", "check_settings"],
    "envoy.extensions.filters.http.ext_authz.v3.CheckSettings": ["context_extensions"],
    "envoy.service.auth.v3.CheckRequest": ["*"],
    "envoy.service.auth.v3.CheckResponse": ["*"],
    "envoy.service.auth.v3.DeniedHttpResponse": ["*"],
    "envoy.service.auth.v3.OkHttpResponse": ["*"],
    "envoy.service.auth.v3.AttributeContext": ["*"],
    "envoy.service.auth.v3.AttributeContext.Peer": ["*"],
    "envoy.service.auth.v3.AttributeContext.Request": ["*"],
    "envoy.service.auth.v3.AttributeContext.HttpRequest": ["*"],
    "envoy.service.auth.v3.AttributeContext.TLSSession": ["*"],
    "envoy.config.core.v3.HeaderMap": ["*"],
    "envoy.config.core.v3.QueryParameter": ["*"],
    # JWT authentication (RequestAuthentication). `filter_state_rules` is left out, so it
    # is refused by name; the JWKS fetch's retry policy keeps what Envoy's fetcher reads.
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": [
        "providers", "rules", "bypass_cors_preflight", "requirement_map",
        "strip_failure_response", "stat_prefix"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtCacheConfig": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig": ["*"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader": ["*"],
    "envoy.config.core.v3.HttpUri": ["uri", "cluster", "timeout"],
    "envoy.config.core.v3.RetryPolicy": ["retry_back_off", "num_retries"],
    "envoy.config.core.v3.BackoffStrategy": ["base_interval", "max_interval"],
    "envoy.type.matcher.v3.MetadataMatcher": ["filter", "path", "value", "invert"],
    "envoy.type.matcher.v3.MetadataMatcher.PathSegment": ["key"],
    "envoy.type.matcher.v3.ValueMatcher": ["null_match", "double_match", "string_match",
                                           "bool_match", "present_match", "list_match",
                                           "or_match"],
    "envoy.type.matcher.v3.ValueMatcher.NullMatch": ["*"],
    "envoy.type.matcher.v3.ListMatcher": ["one_of"],
    "envoy.type.matcher.v3.OrMatcher": ["value_matchers"],
    "envoy.type.matcher.v3.DoubleMatcher": ["range", "exact"],
    "envoy.type.v3.DoubleRange": ["start", "end"],
    "envoy.type.matcher.v3.PathMatcher": ["path"],
    "envoy.type.matcher.v3.FilterStateMatcher": ["key", "string_match"],
    "envoy.type.v3.TokenBucket": ["*"],
    "envoy.type.v3.HttpStatus": ["*"],
    "envoy.type.v3.FractionalPercent": ["*"],
    "envoy.config.core.v3.RuntimeFractionalPercent": ["*"],
    "envoy.config.route.v3.FilterConfig": ["*"],
    "envoy.extensions.filters.http.router.v3.Router": ["suppress_envoy_headers", "dynamic_stats",
                                                       "start_child_span"],
    # routes
    "envoy.config.route.v3.RouteConfiguration": ["name", "virtual_hosts", "response_headers_to_add",
                                                 "ignore_port_in_host_matching",
                                                 "response_headers_to_remove",
                                                 "request_headers_to_add", "request_headers_to_remove",
                                                 "validate_clusters", "max_direct_response_body_size_bytes",
                                                 "typed_per_filter_config",
                                                 "request_mirror_policies"],
    "envoy.config.route.v3.VirtualHost": ["name", "domains", "routes", "request_headers_to_add",
                                          "request_headers_to_remove", "response_headers_to_add",
                                          "response_headers_to_remove", "require_tls",
                                          "typed_per_filter_config", "include_request_attempt_count",
                                          "include_attempt_count_in_response", "retry_policy",
                                          "request_mirror_policies"],
    "envoy.config.route.v3.Decorator": ["operation", "propagate"],
    "envoy.config.route.v3.Route": ["name", "match", "route", "redirect", "direct_response", "decorator",
                                    "request_headers_to_add", "request_headers_to_remove",
                                    "response_headers_to_add", "response_headers_to_remove",
                                    "typed_per_filter_config", "metadata"],
    "envoy.config.route.v3.RouteMatch": ["prefix", "path", "safe_regex", "path_separated_prefix",
                                         "connect_matcher", "case_sensitive", "headers",
                                         "query_parameters"],
    "envoy.config.route.v3.RouteMatch.ConnectMatcher": [],
    "envoy.config.route.v3.HeaderMatcher": ["name", "exact_match", "safe_regex_match", "present_match",
                                            "prefix_match", "suffix_match", "contains_match",
                                            "string_match", "invert_match",
                                            "treat_missing_header_as_empty"],
    "envoy.config.route.v3.QueryParameterMatcher": ["name", "string_match", "present_match"],
    "envoy.config.route.v3.RouteAction": ["cluster", "weighted_clusters", "cluster_not_found_response_code",
                                          "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
                                          "auto_host_rewrite", "timeout", "idle_timeout",
                                          "upgrade_configs", "max_stream_duration", "retry_policy",
                                          "max_grpc_timeout", "grpc_timeout_offset", "hash_policy",
                                          "request_mirror_policies"],
    # Mirroring; request_headers_mutations is refused by name.
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy": ["cluster", "cluster_header",
                                                              "runtime_fraction", "trace_sampled",
                                                              "disable_shadow_host_suffix_append",
                                                              "host_rewrite_literal"],
    # Consistent hashing's request keys.
    "envoy.config.route.v3.RouteAction.HashPolicy": ["header", "cookie", "connection_properties",
                                                     "query_parameter", "filter_state",
                                                     "terminal"],
    "envoy.config.route.v3.RouteAction.HashPolicy.FilterState": ["key"],
    "envoy.config.route.v3.RouteAction.HashPolicy.Header": ["header_name", "regex_rewrite"],
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie": ["name", "ttl", "path", "attributes"],
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute": ["name", "value"],
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties": ["source_ip"],
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter": ["name"],
    # Filter state objects set from a format string (HTTP and network filters).
    "envoy.extensions.filters.common.set_filter_state.v3.FilterStateValue": ["*"],
    "envoy.extensions.filters.http.set_filter_state.v3.Config": ["on_request_headers"],
    "envoy.extensions.filters.network.set_filter_state.v3.Config": ["on_new_connection"],
    # Retries; retry_priority and retry_options_predicates are refused by name.
    "envoy.config.route.v3.RetryPolicy": ["retry_on", "num_retries", "per_try_timeout",
                                          "per_try_idle_timeout", "retry_host_predicate",
                                          "host_selection_retry_max_attempts",
                                          "retriable_status_codes", "retry_back_off",
                                          "rate_limited_retry_back_off", "retriable_headers",
                                          "retriable_request_headers"],
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate": ["name", "typed_config"],
    "envoy.config.route.v3.RetryPolicy.RetryBackOff": ["base_interval", "max_interval"],
    "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff": ["reset_headers", "max_interval"],
    "envoy.config.route.v3.RetryPolicy.ResetHeader": ["name", "format"],
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": [],
    "envoy.config.route.v3.RouteAction.UpgradeConfig": ["upgrade_type", "enabled",
                                                        "connect_config"],
    "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig": [],
    "envoy.config.route.v3.RouteAction.MaxStreamDuration": ["max_stream_duration",
                                                            "grpc_timeout_header_max",
                                                            "grpc_timeout_header_offset"],
    "envoy.config.route.v3.WeightedCluster": ["clusters", "total_weight"],
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": [
        "name", "weight", "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal",
        "typed_per_filter_config"],
    "envoy.config.route.v3.RedirectAction": ["https_redirect", "scheme_redirect", "host_redirect",
                                             "port_redirect", "path_redirect", "prefix_rewrite",
                                             "regex_rewrite", "response_code", "strip_query"],
    "envoy.config.route.v3.DirectResponseAction": ["status", "body"],
    "envoy.type.matcher.v3.StringMatcher": ["exact", "prefix", "suffix", "safe_regex", "contains",
                                            "ignore_case"],
    "envoy.type.matcher.v3.RegexMatcher": ["google_re2", "regex"],
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2": ["max_program_size"],
    "envoy.type.matcher.v3.RegexMatchAndSubstitute": ["pattern", "substitution"],
    # clusters and endpoints
    "envoy.config.cluster.v3.Cluster": ["name", "alt_stat_name", "type", "connect_timeout",
                                        "per_connection_buffer_limit_bytes", "lb_policy",
                                        "load_assignment", "dns_refresh_rate", "respect_dns_ttl",
                                        "dns_jitter",
                                        "dns_lookup_family", "common_http_protocol_options", "least_request_lb_config",
                                        "ring_hash_lb_config", "maglev_lb_config",
                                        "round_robin_lb_config", "eds_cluster_config", "typed_extension_protocol_options",
                                        "http2_protocol_options", "upstream_bind_config",
                                        "transport_socket", "transport_socket_matches",
                                        "metadata", "common_lb_config", "upstream_connection_options",
                                        "circuit_breakers", "max_requests_per_connection",
                                        "filters", "cleanup_interval", "outlier_detection",
                                        "health_checks", "original_dst_lb_config"],
    # HBONE's `connect_originate`: the destination's port replaced by 15008, or a
    # waypoint's address from the connection's metadata.
    "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig": ["upstream_port_override", "metadata_key"],
    # Active health checks (HTTP, TCP, gRPC); the rest is refused by name.
    "envoy.config.core.v3.HealthCheck": ["timeout", "interval", "initial_jitter", "interval_jitter",
                                         "interval_jitter_percent", "unhealthy_threshold",
                                         "healthy_threshold", "reuse_connection",
                                         "http_health_check", "tcp_health_check",
                                         "grpc_health_check", "no_traffic_interval",
                                         "no_traffic_healthy_interval", "unhealthy_interval",
                                         "unhealthy_edge_interval", "healthy_edge_interval",
                                         "always_log_health_check_failures",
                                         "always_log_health_check_success"],
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck": ["host", "path", "request_headers_to_add",
                                                         "request_headers_to_remove",
                                                         "expected_statuses", "retriable_statuses",
                                                         "codec_client_type", "method"],
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck": ["send", "receive"],
    "envoy.config.core.v3.HealthCheck.GrpcHealthCheck": ["service_name", "authority"],
    "envoy.config.core.v3.HealthCheck.Payload": ["*"],
    "envoy.type.v3.Int64Range": ["*"],
    # Every field but `monitors` (Envoy does not implement it either).
    "envoy.config.cluster.v3.OutlierDetection": [
        "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
        "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure", "split_external_local_origin_errors",
        "consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
        "enforcing_local_origin_success_rate", "failure_percentage_threshold",
        "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
        "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
        "max_ejection_time", "max_ejection_time_jitter",
        "successful_active_health_check_uneject_host", "always_eject_one_host"],
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig": ["*"],
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig": ["*"],
    # Upstream network filters: only Istio's metadata exchange, a documented no-op.
    "envoy.config.cluster.v3.Filter": ["name", "typed_config"],
    # Limits for the whole proxy; retry budgets and per-host limits are refused by name.
    "envoy.config.cluster.v3.CircuitBreakers": ["thresholds", "per_host_thresholds"],
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": [
        "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries",
        "retry_budget", "track_remaining", "max_connection_pools"],
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget": ["*"],
    "envoy.config.cluster.v3.UpstreamConnectionOptions": ["tcp_keepalive"],
    "envoy.config.core.v3.TcpKeepalive": ["*"],
    # The rest (zone-aware routing among them) is refused by name.
    "envoy.config.cluster.v3.Cluster.CommonLbConfig": ["healthy_panic_threshold",
                                                       "locality_weighted_lb_config"],
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig": [],
    "envoy.config.cluster.v3.Cluster.TransportSocketMatch": ["name", "match", "transport_socket"],
    # TLS (transport_sockets.tls): what Istio's sidecars and gateways are sent.
    "envoy.config.core.v3.TransportSocket": ["name", "typed_config"],
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": [
        "common_tls_context", "require_client_certificate", "require_sni",
        "disable_stateless_session_resumption", "disable_stateful_session_resumption",
        "session_timeout"],
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": [
        "common_tls_context", "sni", "auto_host_sni", "allow_renegotiation", "max_session_keys"],
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": [
        "tls_params", "tls_certificates", "tls_certificate_sds_secret_configs",
        "validation_context", "validation_context_sds_secret_config",
        "combined_validation_context", "alpn_protocols"],
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext": [
        "default_validation_context", "validation_context_sds_secret_config"],
    "envoy.extensions.transport_sockets.tls.v3.TlsParameters": [
        "tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites",
        "ecdh_curves"],
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate": ["certificate_chain",
                                                                  "private_key"],
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": [
        "trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names",
        "allow_expired_certificate", "trust_chain_verification"],
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher": ["san_type", "matcher"],
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig": ["name", "sds_config"],
    "envoy.extensions.transport_sockets.tls.v3.Secret": ["name", "tls_certificate",
                                                         "validation_context"],
    "envoy.config.core.v3.BindConfig": ["source_address"],
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig": ["eds_config", "service_name"],
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": ["choice_count", "active_request_bias",
                                                             "slow_start_config"],
    "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig": ["slow_start_config"],
    "envoy.config.cluster.v3.Cluster.SlowStartConfig": ["*"],
    "envoy.config.core.v3.RuntimeDouble": ["*"],
    "envoy.config.endpoint.v3.ClusterLoadAssignment": ["cluster_name", "endpoints", "policy"],
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": ["overprovisioning_factor"],
    "envoy.config.endpoint.v3.LocalityLbEndpoints": ["locality", "lb_endpoints",
                                                     "load_balancing_weight", "priority"],
    "envoy.config.endpoint.v3.LbEndpoint": ["endpoint", "health_status", "metadata",
                                            "load_balancing_weight"],
    "envoy.config.endpoint.v3.Endpoint": ["address", "hostname", "health_check_config"],
    # Only used by active health checking, which is not implemented (health_checks is
    # refused): an empty one, as istiod sends, is accepted; any field set in it is not.
    "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig": [],
}

MODULES = [
    "envoy.config.core.v3.address_pb2", "envoy.config.core.v3.base_pb2",
    "envoy.config.core.v3.protocol_pb2", "envoy.config.core.v3.substitution_format_string_pb2",
    "envoy.config.core.v3.health_check_pb2",
    "envoy.config.bootstrap.v3.bootstrap_pb2", "envoy.config.listener.v3.listener_pb2",
    "envoy.config.listener.v3.listener_components_pb2", "envoy.config.accesslog.v3.accesslog_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.access_loggers.open_telemetry.v3.logs_service_pb2",
    "envoy.extensions.access_loggers.grpc.v3.als_pb2",
    "opentelemetry.proto.common.v1.common_pb2", "opentelemetry.proto.resource.v1.resource_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    "envoy.config.route.v3.route_pb2", "envoy.config.route.v3.route_components_pb2",
    "envoy.type.matcher.v3.string_pb2", "envoy.type.matcher.v3.regex_pb2",
    "envoy.config.cluster.v3.cluster_pb2", "envoy.config.cluster.v3.filter_pb2", "envoy.config.cluster.v3.circuit_breaker_pb2",
    "envoy.config.cluster.v3.outlier_detection_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2", "envoy.config.endpoint.v3.endpoint_components_pb2",
    "envoy.config.core.v3.config_source_pb2", "envoy.config.core.v3.grpc_service_pb2",
    "envoy.service.discovery.v3.discovery_pb2", "envoy.service.discovery.v3.ads_pb2",
    "google.rpc.status_pb2", "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.type.v3.range_pb2", "envoy.type.v3.percent_pb2", "envoy.type.v3.hash_policy_pb2", "envoy.type.v3.token_bucket_pb2",
    "envoy.type.v3.http_status_pb2",
    "envoy.extensions.filters.http.fault.v3.fault_pb2",
    "envoy.extensions.filters.common.fault.v3.fault_pb2",
    "envoy.extensions.filters.http.cors.v3.cors_pb2",
    "envoy.extensions.filters.http.grpc_stats.v3.config_pb2",
    "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.config.rbac.v3.rbac_pb2", "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.network.rbac.v3.rbac_pb2", "envoy.type.matcher.v3.metadata_pb2",
    "envoy.type.matcher.v3.value_pb2", "envoy.type.matcher.v3.number_pb2",
    "envoy.type.matcher.v3.path_pb2", "envoy.type.matcher.v3.filter_state_pb2",
    "envoy.extensions.filters.http.compressor.v3.compressor_pb2",
    "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
    "envoy.service.auth.v3.external_auth_pb2", "envoy.service.auth.v3.attribute_context_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.config_pb2", "envoy.config.core.v3.http_uri_pb2",
    "envoy.config.core.v3.backoff_pb2",
    "envoy.extensions.compression.gzip.compressor.v3.gzip_pb2",
    "envoy.extensions.compression.brotli.compressor.v3.brotli_pb2",
    "envoy.extensions.compression.zstd.compressor.v3.zstd_pb2",
    "envoy.config.core.v3.grpc_method_list_pb2",
    "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
    "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
    "envoy.extensions.filters.listener.http_inspector.v3.http_inspector_pb2",
    "xds.type.matcher.v3.matcher_pb2", "xds.type.matcher.v3.ip_pb2", "xds.core.v3.extension_pb2",
    "xds.core.v3.cidr_pb2",
    "envoy.extensions.matching.common_inputs.network.v3.network_inputs_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.transport_sockets.internal_upstream.v3.internal_upstream_pb2",
    "envoy.extensions.bootstrap.internal_listener.v3.internal_listener_pb2",
    "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    "envoy.extensions.filters.common.set_filter_state.v3.value_pb2",
    "envoy.extensions.filters.http.set_filter_state.v3.set_filter_state_pb2",
    "envoy.extensions.filters.network.set_filter_state.v3.set_filter_state_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.transport_sockets.tls.v3.common_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.request_id.uuid.v3.uuid_pb2",
    "envoy.config.trace.v3.http_tracer_pb2", "envoy.config.trace.v3.zipkin_pb2",
    "envoy.config.trace.v3.opentelemetry_pb2", "envoy.type.tracing.v3.custom_tag_pb2",
    "envoy.type.metadata.v3.metadata_pb2", "envoy.config.overload.v3.overload_pb2",
    "envoy.config.core.v3.extension_pb2", "udpa.type.v1.typed_struct_pb2",
    "xds.type.v3.typed_struct_pb2", "envoy.config.metrics.v3.stats_pb2", "envoy.config.metrics.v3.metrics_service_pb2",
    "envoy.extensions.resource_monitors.downstream_connections.v3.downstream_connections_pb2",
]

# Services written out whole (tonic generates the ADS client and the test server from them).
SERVICES = ["envoy.service.discovery.v3.ads_pb2", "envoy.service.secret.v3.sds_pb2",
            "envoy.service.auth.v3.external_auth_pb2"]

SCALARS = {
    d.FieldDescriptor.TYPE_DOUBLE: "double", d.FieldDescriptor.TYPE_FLOAT: "float",
    d.FieldDescriptor.TYPE_INT64: "int64", d.FieldDescriptor.TYPE_UINT64: "uint64",
    d.FieldDescriptor.TYPE_INT32: "int32", d.FieldDescriptor.TYPE_FIXED64: "fixed64",
    d.FieldDescriptor.TYPE_FIXED32: "fixed32", d.FieldDescriptor.TYPE_BOOL: "bool",
    d.FieldDescriptor.TYPE_STRING: "string", d.FieldDescriptor.TYPE_BYTES: "bytes",
    d.FieldDescriptor.TYPE_UINT32: "uint32", d.FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    d.FieldDescriptor.TYPE_SFIXED64: "sfixed64", d.FieldDescriptor.TYPE_SINT32: "sint32",
    d.FieldDescriptor.TYPE_SINT64: "sint64",
}


def main(out_dir):
    pool = {}
    for m in MODULES:
        mod = importlib.import_module(m)
        fd = mod.DESCRIPTOR
        for name in fd.message_types_by_name:
            collect(fd.message_types_by_name[name], pool)
    files = {}  # file name -> (package, [top-level message descriptors])
    services = {}
    for m in SERVICES:
        fd = importlib.import_module(m).DESCRIPTOR
        for svc in fd.services_by_name.values():
            services.setdefault(fd.name, []).append(svc)
            files.setdefault(fd.name, (fd.package, []))
    used_enums = {}
    for full in SUBSET:
        msg = pool[full]
        top = msg
        while top.containing_type is not None:
            top = top.containing_type
        files.setdefault(top.file.name, (top.file.package, []))
        if top not in files[top.file.name][1]:
            files[top.file.name][1].append(top)
    for top in [t for _, ts in files.values() for t in ts]:
        render_message(top, 0, set(), "")  # first pass: finds the top-level enums in use
    for e in top_needed:
        files.setdefault(e.file.name, (e.file.package, []))
    # Fields of kept messages that the subset leaves out: named in NACKs when a control
    # plane sends one (the wire carries only the number).
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "omitted_fields.txt"), "w") as f:
        for full in sorted(SUBSET):
            keep = SUBSET[full]
            if "*" in keep:
                continue
            for fld in pool[full].fields:
                if fld.name not in keep:
                    f.write(f"{full} {fld.number} {fld.name}\n")
    for fname, (package, tops) in sorted(files.items()):
        imports = set()
        body = []
        for e in sorted(top_needed, key=lambda e: e.full_name):
            if e.file.name == fname:
                body.extend(render_enum(e, 0))
        for top in tops:
            body.extend(render_message(top, 0, imports, fname))
        for svc in services.get(fname, []):
            body.extend(render_service(svc, imports))
        path = os.path.join(out_dir, fname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("// Generated by tools/proto_subset.py from Envoy's descriptors: a subset.\n")
            f.write('syntax = "proto3";\n\n')
            f.write(f"package {package};\n\n")
            for imp in sorted(imports - {fname}):
                f.write(f'import "{imp}";\n')
            f.write("\n" + "\n".join(body) + "\n")
        print("wrote", path)


def collect(msg, pool):
    pool[msg.full_name] = msg
    for n in msg.nested_types:
        collect(n, pool)


def wanted(msg):
    return msg.full_name in SUBSET


def contains_wanted(msg):
    return wanted(msg) or any(contains_wanted(n) for n in msg.nested_types)


def type_name(field, imports, here):
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        t = field.message_type
        if t.GetOptions().map_entry:
            k = t.fields_by_name["key"]
            v = t.fields_by_name["value"]
            return f"map<{type_name(k, imports, here)}, {type_name(v, imports, here)}>"
        imports.add(t.file.name)
        if not t.full_name.startswith("google.protobuf") and t.full_name not in SUBSET:
            sys.exit(f"{field.full_name} refers to {t.full_name}, which is not in SUBSET")
        return "." + t.full_name
    if field.type == d.FieldDescriptor.TYPE_ENUM:
        imports.add(field.enum_type.file.name)
        e = field.enum_type
        if e.containing_type is None or not contains_wanted(e.containing_type):
            top_needed.add(e)
        return "." + e.full_name
    return SCALARS[field.type]


top_needed = set()


def render_message(msg, depth, imports, here):
    ind = "  " * depth
    out = [f"{ind}message {msg.name} {{"]
    keep = SUBSET.get(msg.full_name, [])
    fields = [f for f in msg.fields if "*" in keep or f.name in keep]
    missing = set(keep) - {"*"} - {f.name for f in msg.fields}
    if missing:
        sys.exit(f"{msg.full_name}: no fields {missing}")
    for e in msg.enum_types:
        out.extend(render_enum(e, depth + 1))
    for n in msg.nested_types:
        if contains_wanted(n) and not n.GetOptions().map_entry:
            out.extend(render_message(n, depth + 1, imports, here))
    done_oneofs = set()
    for f in fields:
        oneof = f.containing_oneof
        if oneof is not None and not is_synthetic(oneof):
            if oneof.name in done_oneofs:
                continue
            done_oneofs.add(oneof.name)
            out.append(f"{ind}  oneof {oneof.name} {{")
            for g in oneof.fields:
                if g in fields:
                    out.append(f"{ind}    {type_name(g, imports, here)} {g.name} = {g.number};")
            out.append(f"{ind}  }}")
            continue
        label = ""
        if is_repeated(f) and not (
                f.type == d.FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry):
            label = "repeated "
        elif oneof is not None:
            label = "optional "
        out.append(f"{ind}  {label}{type_name(f, imports, here)} {f.name} = {f.number};")
    out.append(f"{ind}}}")
    return out


def is_repeated(f):
    if hasattr(f, "is_repeated"):
        return f.is_repeated
    return f.label == d.FieldDescriptor.LABEL_REPEATED


def is_synthetic(oneof):
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def render_service(svc, imports):
    out = [f"service {svc.name} {{"]
    for m in svc.methods:
        imports.add(m.input_type.file.name)
        imports.add(m.output_type.file.name)
        cs = "stream " if m.client_streaming else ""
        ss = "stream " if m.server_streaming else ""
        out.append(f"  rpc {m.name}({cs}.{m.input_type.full_name}) returns ({ss}.{m.output_type.full_name});")
    out.append("}")
    return out


def render_enum(e, depth):
    ind = "  " * depth
    out = [f"{ind}enum {e.name} {{"]
    if len({v.number for v in e.values}) < len(e.values):
        out.append(f"{ind}  option allow_alias = true;")
    for v in e.values:
        out.append(f"{ind}  {v.name} = {v.number};")
    out.append(f"{ind}}}")
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "proto")
