//! The stat families: each scope's counters, gauges and histograms, with Envoy's names.

stat_family! {
    /// `listener.<address>.` stats.
    pub enum ListenerStat {
        DownstreamCxTotal = "downstream_cx_total",
        DownstreamCxActive = "downstream_cx_active",
        DownstreamCxDestroy = "downstream_cx_destroy",
        DownstreamCxOverflow = "downstream_cx_overflow",
        DownstreamGlobalCxOverflow = "downstream_global_cx_overflow",
        NoFilterChainMatch = "no_filter_chain_match",
        DownstreamPreCxTimeout = "downstream_pre_cx_timeout",
        DownstreamPreCxActive = "downstream_pre_cx_active",
        OriginalDstRestored = "original_dst_restored",
        OriginalDstMissing = "original_dst_missing",
        DownstreamCxTransportSocketConnectTimeout = "downstream_cx_transport_socket_connect_timeout",
        SslHandshake = "ssl.handshake",
        SslConnectionError = "ssl.connection_error",
        SslFailVerifyNoCert = "ssl.fail_verify_no_cert",
        SslFailVerifyError = "ssl.fail_verify_error",
        SslFailVerifySan = "ssl.fail_verify_san",
        SslNoCertificate = "ssl.no_certificate",
        SslSessionReused = "ssl.session_reused",
    } gauges [DownstreamCxActive, DownstreamPreCxActive]
      lazy_stats [SslHandshake, SslConnectionError, SslFailVerifyNoCert, SslFailVerifyError,
                  SslFailVerifySan, SslNoCertificate, SslSessionReused, OriginalDstRestored,
                  OriginalDstMissing]
}

stat_family! {
    /// `tcp.<stat_prefix>.` stats of a TCP proxy.
    pub enum TcpStat {
        DownstreamCxTotal = "downstream_cx_total",
        DownstreamCxNoRoute = "downstream_cx_no_route",
        DownstreamCxRxBytesTotal = "downstream_cx_rx_bytes_total",
        DownstreamCxTxBytesTotal = "downstream_cx_tx_bytes_total",
        IdleTimeout = "idle_timeout",
        MaxDownstreamConnectionDurationReached = "max_downstream_connection_duration",
        UpstreamFlushTotal = "upstream_flush_total",
        UpstreamConnectAttemptsExceeded = "upstream_connect_attempts_exceeded",
    } gauges [] lazy_stats [UpstreamConnectAttemptsExceeded]
}

stat_family! {
    /// `http.<stat_prefix>.` stats of a connection manager.
    pub enum HttpStat {
        DownstreamCxTotal = "downstream_cx_total",
        DownstreamCxActive = "downstream_cx_active",
        DownstreamCxHttp1Total = "downstream_cx_http1_total",
        DownstreamCxHttp2Total = "downstream_cx_http2_total",
        DownstreamCxProtocolError = "downstream_cx_protocol_error",
        DownstreamCxIdleTimeout = "downstream_cx_idle_timeout",
        DownstreamCxDrainClose = "downstream_cx_drain_close",
        DownstreamCxRxBytesTotal = "downstream_cx_rx_bytes_total",
        DownstreamCxTxBytesTotal = "downstream_cx_tx_bytes_total",
        DownstreamRqTotal = "downstream_rq_total",
        DownstreamRqActive = "downstream_rq_active",
        DownstreamRqHttp1Total = "downstream_rq_http1_total",
        DownstreamRqHttp2Total = "downstream_rq_http2_total",
        DownstreamRqTxReset = "downstream_rq_tx_reset",
        DownstreamRq1xx = "downstream_rq_1xx",
        DownstreamRq2xx = "downstream_rq_2xx",
        DownstreamRq3xx = "downstream_rq_3xx",
        DownstreamRq4xx = "downstream_rq_4xx",
        DownstreamRq5xx = "downstream_rq_5xx",
        DownstreamRqCompleted = "downstream_rq_completed",
        DownstreamRqTimeout = "downstream_rq_timeout",
        DownstreamRqMaxDurationReached = "downstream_rq_max_duration_reached",
        DownstreamRqHeaderTimeout = "downstream_rq_header_timeout",
        DownstreamRqIdleTimeout = "downstream_rq_idle_timeout",
        DownstreamRqTooManyPrematureResets = "downstream_rq_too_many_premature_resets",
        DownstreamRqTooLarge = "downstream_rq_too_large",
        DownstreamRqWsOnNonWsRoute = "downstream_rq_ws_on_non_ws_route",
        DownstreamRqNonRelativePath = "downstream_rq_non_relative_path",
        DownstreamRqRxReset = "downstream_rq_rx_reset",
        DownstreamRqFailedPathNormalization = "downstream_rq_failed_path_normalization",
        DownstreamRqRedirectedWithNormalizedPath = "downstream_rq_redirected_with_normalized_path",
        Rq404NoRoute = "no_route",
        RqDirectResponse = "rq_direct_response",
        RqRedirect = "rq_redirect",
        RqUpgradeRequired = "downstream_rq_http10_rejected",
        PanicsCaught = "downstream_cx_panic",
        DownstreamCxUpgradesTotal = "downstream_cx_upgrades_total",
        DownstreamCxUpgradesActive = "downstream_cx_upgrades_active",
        TracingRandomSampling = "tracing.random_sampling",
        TracingServiceForced = "tracing.service_forced",
        TracingClientEnabled = "tracing.client_enabled",
        TracingNotTraceable = "tracing.not_traceable",
        TracingHealthCheck = "tracing.health_check",
    } gauges [DownstreamCxActive, DownstreamRqActive, DownstreamCxUpgradesActive]
      lazy_stats [PanicsCaught, RqUpgradeRequired]
      histograms ["downstream_rq_time"]
}

stat_family! {
    /// `http2.` stats: Envoy keeps its HTTP/2 codec's counters at the root, for every
    /// downstream connection manager together.
    pub enum Http2Stat {
        OutboundFlood = "outbound_flood",
        OutboundControlFlood = "outbound_control_flood",
        InboundEmptyFramesFlood = "inbound_empty_frames_flood",
        InboundPriorityFramesFlood = "inbound_priority_frames_flood",
        InboundWindowUpdateFramesFlood = "inbound_window_update_frames_flood",
    } gauges [] lazy true
}

stat_family! {
    /// `cluster.<name>.` stats.
    pub enum ClusterStat {
        UpstreamCxTotal = "upstream_cx_total",
        UpstreamCxActive = "upstream_cx_active",
        UpstreamCxHttp1Total = "upstream_cx_http1_total",
        UpstreamCxHttp2Total = "upstream_cx_http2_total",
        UpstreamCxConnectFail = "upstream_cx_connect_fail",
        UpstreamCxConnectTimeout = "upstream_cx_connect_timeout",
        UpstreamCxDestroy = "upstream_cx_destroy",
        UpstreamCxDestroyRemote = "upstream_cx_destroy_remote",
        UpstreamCxRxBytesTotal = "upstream_cx_rx_bytes_total",
        UpstreamCxTxBytesTotal = "upstream_cx_tx_bytes_total",
        UpstreamCxIdleTimeout = "upstream_cx_idle_timeout",
        UpstreamCxPoolOverflow = "upstream_cx_pool_overflow",
        UpstreamCxMaxRequests = "upstream_cx_max_requests",
        UpstreamCxMaxDurationReached = "upstream_cx_max_duration_reached",
        UpstreamCxProtocolError = "upstream_cx_protocol_error",
        UpstreamRqTotal = "upstream_rq_total",
        UpstreamRqActive = "upstream_rq_active",
        UpstreamRqCompleted = "upstream_rq_completed",
        UpstreamRq1xx = "upstream_rq_1xx",
        UpstreamRq2xx = "upstream_rq_2xx",
        UpstreamRq3xx = "upstream_rq_3xx",
        UpstreamRq4xx = "upstream_rq_4xx",
        UpstreamRq5xx = "upstream_rq_5xx",
        UpstreamRqTimeout = "upstream_rq_timeout",
        UpstreamRqRetry = "upstream_rq_retry",
        UpstreamRqRetrySuccess = "upstream_rq_retry_success",
        UpstreamRqRetryOverflow = "upstream_rq_retry_overflow",
        RetryOrShadowAbandoned = "retry_or_shadow_abandoned",
        UpstreamRqRetryLimitExceeded = "upstream_rq_retry_limit_exceeded",
        UpstreamRqRetryBackoffExponential = "upstream_rq_retry_backoff_exponential",
        UpstreamRqRetryBackoffRatelimited = "upstream_rq_retry_backoff_ratelimited",
        UpstreamRqPerTryTimeout = "upstream_rq_per_try_timeout",
        UpstreamRqPerTryIdleTimeout = "upstream_rq_per_try_idle_timeout",
        UpstreamRqPendingOverflow = "upstream_rq_pending_overflow",
        UpstreamRqRxReset = "upstream_rq_rx_reset",
        UpstreamRqTxReset = "upstream_rq_tx_reset",
        UpstreamCxNoneHealthy = "upstream_cx_none_healthy",
        LbHealthyPanic = "lb_healthy_panic",
        SslHandshake = "ssl.handshake",
        SslConnectionError = "ssl.connection_error",
        SslFailVerifyError = "ssl.fail_verify_error",
        SslFailVerifySan = "ssl.fail_verify_san",
        SslFailVerifyNoCert = "ssl.fail_verify_no_cert",
        SslSessionReused = "ssl.session_reused",
        UpstreamCxOverflow = "upstream_cx_overflow",
        UpstreamRqActiveOverflow = "upstream_rq_active_overflow",
        // What ext_authz decided for requests routed to the cluster.
        ExtAuthzOk = "ext_authz.ok",
        ExtAuthzDenied = "ext_authz.denied",
        ExtAuthzError = "ext_authz.error",
        ExtAuthzFailureModeAllowed = "ext_authz.failure_mode_allowed",
        // Passthrough metadata an internal endpoint's connection did not get.
        InternalUpstreamNoMetadata = "internal_upstream.no_metadata",
        // The grpc_stats filter's, as Envoy names them without per-method stats (in the
        // cluster's scope: a scope of their own was 300 bytes a cluster, 3 MB at 10,000).
        GrpcFailure = "grpc.failure",
        GrpcRequestMessageCount = "grpc.request_message_count",
        GrpcResponseMessageCount = "grpc.response_message_count",
        GrpcSuccess = "grpc.success",
        GrpcTotal = "grpc.total",
        GrpcStatus0 = "grpc.0",
        GrpcStatus1 = "grpc.1",
        GrpcStatus2 = "grpc.2",
        GrpcStatus3 = "grpc.3",
        GrpcStatus4 = "grpc.4",
        GrpcStatus5 = "grpc.5",
        GrpcStatus6 = "grpc.6",
        GrpcStatus7 = "grpc.7",
        GrpcStatus8 = "grpc.8",
        GrpcStatus9 = "grpc.9",
        GrpcStatus10 = "grpc.10",
        GrpcStatus11 = "grpc.11",
        GrpcStatus12 = "grpc.12",
        GrpcStatus13 = "grpc.13",
        GrpcStatus14 = "grpc.14",
        GrpcStatus15 = "grpc.15",
        GrpcStatus16 = "grpc.16",
    } gauges [UpstreamCxActive, UpstreamRqActive]
      lazy_stats [UpstreamRq1xx, UpstreamRq2xx, UpstreamRq3xx, UpstreamRq4xx, UpstreamRq5xx,
                  SslHandshake, SslConnectionError, SslFailVerifyError, SslFailVerifySan,
                  SslFailVerifyNoCert, SslSessionReused, ExtAuthzOk,
                  ExtAuthzDenied, ExtAuthzError, ExtAuthzFailureModeAllowed,
                  InternalUpstreamNoMetadata, GrpcFailure, GrpcRequestMessageCount,
                  GrpcResponseMessageCount, GrpcSuccess, GrpcTotal, GrpcStatus0, GrpcStatus1,
                  GrpcStatus2, GrpcStatus3, GrpcStatus4, GrpcStatus5, GrpcStatus6, GrpcStatus7,
                  GrpcStatus8, GrpcStatus9, GrpcStatus10, GrpcStatus11, GrpcStatus12,
                  GrpcStatus13, GrpcStatus14, GrpcStatus15, GrpcStatus16]
      codes "upstream_rq_"
      histograms ["upstream_rq_time", "upstream_cx_connect_ms"] lazy_histograms [0]
}

stat_family! {
    /// `cluster.<name>.` stats of its configuration's updates and membership (Envoy's
    /// config update and endpoint stats), which only the control thread writes. A family
    /// of their own, so that the control thread's cells for a cluster are these six
    /// rather than a block of every cluster stat (456 bytes each for 10,000 EDS clusters).
    pub enum ClusterUpdateStat {
        MembershipTotal = "membership_total",
        UpdateAttempt = "update_attempt",
        UpdateSuccess = "update_success",
        UpdateFailure = "update_failure",
        UpdateRejected = "update_rejected",
        UpdateEmpty = "update_empty",
    } gauges [MembershipTotal]
      lazy_stats [UpdateRejected]
}

stat_family! {
    /// `cluster.<name>.health_check.`: active health checking, as Envoy names it.
    pub enum HealthStat {
        Attempt = "attempt",
        Success = "success",
        Failure = "failure",
        PassiveFailure = "passive_failure",
        NetworkFailure = "network_failure",
        VerifyCluster = "verify_cluster",
        Healthy = "healthy",
        Degraded = "degraded",
    } gauges [Healthy, Degraded]
}

stat_family! {
    /// `cluster.<name>.outlier_detection.`: outliers detected and ejected, by kind, as
    /// Envoy 1.40 names them (`ejections_total`, `ejections_consecutive_5xx` and
    /// `ejections_success_rate` are Envoy's deprecated ones, still counted as it does).
    pub enum OutlierStat {
        EjectionsActive = "ejections_active",
        EjectionsOverflow = "ejections_overflow",
        EjectionsEnforcedTotal = "ejections_enforced_total",
        EjectionsTotal = "ejections_total",
        EjectionsConsecutive5xx = "ejections_consecutive_5xx",
        EjectionsSuccessRate = "ejections_success_rate",
        DetectedConsecutive5xx = "ejections_detected_consecutive_5xx",
        EnforcedConsecutive5xx = "ejections_enforced_consecutive_5xx",
        DetectedConsecutiveGateway = "ejections_detected_consecutive_gateway_failure",
        EnforcedConsecutiveGateway = "ejections_enforced_consecutive_gateway_failure",
        DetectedConsecutiveLocal = "ejections_detected_consecutive_local_origin_failure",
        EnforcedConsecutiveLocal = "ejections_enforced_consecutive_local_origin_failure",
        DetectedSuccessRate = "ejections_detected_success_rate",
        EnforcedSuccessRate = "ejections_enforced_success_rate",
        DetectedLocalSuccessRate = "ejections_detected_local_origin_success_rate",
        EnforcedLocalSuccessRate = "ejections_enforced_local_origin_success_rate",
        DetectedFailurePercentage = "ejections_detected_failure_percentage",
        EnforcedFailurePercentage = "ejections_enforced_failure_percentage",
        DetectedLocalFailurePercentage = "ejections_detected_local_origin_failure_percentage",
        EnforcedLocalFailurePercentage = "ejections_enforced_local_origin_failure_percentage",
        // Envoy's degraded-host detection (not implemented: always 0, as in Envoy without
        // `detect_degraded_hosts`).
        DetectedDegradation = "ejections_detected_degradation",
    } gauges [EjectionsActive]
}

stat_family! {
    /// `server.` and `runtime.`-style process stats and the ignored-field counters;
    /// `state` is Envoy's `ServerInfo.State` (0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING).
    pub enum ServerStat {
        ConcurrencyWorkers = "concurrency",
        Live = "live",
        IgnoredConfigFields = "ignored_config_fields",
        StaticUnknownFields = "static_unknown_fields",
        State = "state",
    } gauges [ConcurrencyWorkers, Live, State] set [ConcurrencyWorkers, Live, State]
      lazy_stats [IgnoredConfigFields]
}

stat_family! {
    /// `access_logs.open_telemetry_access_log.<stat_prefix>`: records written to a batch
    /// and dropped (a batch too full), and exports that failed, as Envoy 1.40 names them
    /// (`grpc_entries_flushed` counts Envoy's critical buffered entries, which this logger
    /// does not use: 0 in both).
    pub enum OtelLogStat {
        LogsWritten = "logs_written",
        LogsDropped = "logs_dropped",
        GrpcEntriesFlushed = "grpc_entries_flushed",
        GrpcEntriesFlushFailed = "grpc_entries_flush_failed",
    } gauges []
}

stat_family! {
    /// `tracing.zipkin.`: the Zipkin tracer's exports, for every connection manager that
    /// uses it (Envoy's names: a report is one POST; only a 202 answer counts as sent).
    pub enum ZipkinStat {
        ReportsSkippedNoCluster = "reports_skipped_no_cluster",
        ReportsSent = "reports_sent",
        ReportsDropped = "reports_dropped",
        ReportsFailed = "reports_failed",
        SpansSent = "spans_sent",
        TimerFlushed = "timer_flushed",
    } gauges []
}

stat_family! {
    /// `tracing.opentelemetry.`: the OpenTelemetry tracer's exports (Envoy's names), and
    /// Ringside's own `exports_failed`: exports that failed or timed out (Envoy logs them).
    pub enum OtelTraceStat {
        SpansSent = "spans_sent",
        SpansDropped = "spans_dropped",
        TimerFlushed = "timer_flushed",
        ExportsFailed = "exports_failed",
    } gauges []
}

stat_family! {
    /// `access_log_file.`: the access-log thread's work as Envoy names it (lines handed
    /// over, writes done and failed, bytes waiting), and Ringside's own `dropped_lines`:
    /// lines dropped because the thread fell too far behind (a core never waits for it).
    pub enum AccessLogFileStat {
        WriteBuffered = "write_buffered",
        WriteCompleted = "write_completed",
        WriteFailed = "write_failed",
        WriteTotalBuffered = "write_total_buffered",
        DroppedLines = "dropped_lines",
    } gauges [WriteTotalBuffered]
}

stat_family! {
    /// `listener_manager.`: whether the workers serve (pilot-agent's readiness reads it).
    pub enum ListenerManagerStat {
        WorkersStarted = "workers_started",
    } gauges [WorkersStarted] set [WorkersStarted]
}

stat_family! {
    /// `cluster.<name>.circuit_breakers.<priority>.`: whether each breaker is open.
    pub enum BreakerStat {
        CxOpen = "cx_open",
        CxPoolOpen = "cx_pool_open",
        RqOpen = "rq_open",
        RqPendingOpen = "rq_pending_open",
        RqRetryOpen = "rq_retry_open",
    } gauges [CxOpen, CxPoolOpen, RqOpen, RqPendingOpen, RqRetryOpen]
}

stat_family! {
    /// `cluster.<name>.circuit_breakers.<priority>.remaining_*`, with `track_remaining`.
    pub enum BreakerRemainingStat {
        RemainingCx = "remaining_cx",
        RemainingCxPools = "remaining_cx_pools",
        RemainingPending = "remaining_pending",
        RemainingRetries = "remaining_retries",
        RemainingRq = "remaining_rq",
    } gauges [RemainingCx, RemainingCxPools, RemainingPending, RemainingRetries, RemainingRq]
      set [RemainingCx, RemainingCxPools, RemainingPending, RemainingRetries, RemainingRq]
}

stat_family! {
    /// `http.<prefix>.fault.` stats of the fault filter.
    pub enum FaultStat {
        ActiveFaults = "active_faults",
        AbortsInjected = "aborts_injected",
        DelaysInjected = "delays_injected",
        FaultsOverflow = "faults_overflow",
        ResponseRlInjected = "response_rl_injected",
    } gauges [ActiveFaults]
}

stat_family! {
    /// The CORS filter's stats, in the connection manager's `http.<prefix>.` scope.
    pub enum CorsStat {
        OriginInvalid = "cors.origin_invalid",
        OriginValid = "cors.origin_valid",
    } gauges []
}

stat_family! {
    /// The RBAC filters' enforced verdicts: `<prefix>rbac.<rules_stat_prefix>`.
    pub enum RbacStat {
        Allowed = "allowed",
        Denied = "denied",
    } gauges []
}

stat_family! {
    /// The RBAC filters' shadow verdicts: `<prefix>rbac.<shadow_rules_stat_prefix>`.
    pub enum RbacShadowStat {
        ShadowAllowed = "shadow_allowed",
        ShadowDenied = "shadow_denied",
    } gauges []
}

stat_family! {
    /// One direction's stats of a compressor filter:
    /// `http.<prefix>.compressor.<library name>.<library>.{request.,response.,}` (the
    /// response's without `response.` when the filter has no `response_direction_config`).
    pub enum CompressorStat {
        Compressed = "compressed",
        NotCompressed = "not_compressed",
        TotalUncompressedBytes = "total_uncompressed_bytes",
        TotalCompressedBytes = "total_compressed_bytes",
        ContentLengthTooSmall = "content_length_too_small",
    } gauges []
}

stat_family! {
    /// A compressor filter's Accept-Encoding and ETag stats, always in
    /// `http.<prefix>.compressor.<library name>.<library>.`.
    pub enum CompressorHeaderStat {
        NoAcceptHeader = "no_accept_header",
        HeaderIdentity = "header_identity",
        HeaderCompressorUsed = "header_compressor_used",
        HeaderCompressorOvershadowed = "header_compressor_overshadowed",
        HeaderWildcard = "header_wildcard",
        HeaderNotValid = "header_not_valid",
        NotCompressedEtag = "not_compressed_etag",
    } gauges []
}

stat_family! {
    /// `<stat_prefix>.http_local_rate_limit.` stats of the local rate limit filter.
    pub enum LocalRateLimitStat {
        Enabled = "enabled",
        Enforced = "enforced",
        Ok = "ok",
        RateLimited = "rate_limited",
        ShadowMode = "shadow_mode",
    } gauges []
}

/// Histograms of `ClusterStat` scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterHistogram {
    UpstreamRqTime = 0,
    UpstreamCxConnectMs = 1,
}

/// Histograms of `HttpStat` scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpHistogram {
    DownstreamRqTime = 0,
}

stat_family! {
    /// `envoy.filters.http.jwt_authn`: `http.<prefix>.jwt_authn.<stat_prefix>`.
    pub enum JwtAuthnStat {
        Allowed = "allowed",
        CorsPreflightBypassed = "cors_preflight_bypassed",
        Denied = "denied",
        JwksFetchSuccess = "jwks_fetch_success",
        JwksFetchFailed = "jwks_fetch_failed",
        JwtCacheHit = "jwt_cache_hit",
        JwtCacheMiss = "jwt_cache_miss",
    } gauges []
}

stat_family! {
    /// `envoy.filters.http.ext_authz`: `http.<prefix>.ext_authz.[<stat_prefix>.]`.
    pub enum ExtAuthzStat {
        Ok = "ok",
        Denied = "denied",
        Error = "error",
        Disabled = "disabled",
        FailureModeAllowed = "failure_mode_allowed",
        // Envoy's, for features Ringside refuses or does not have: they stay 0.
        FilterStateNameCollision = "filter_state_name_collision",
        IgnoredDynamicMetadata = "ignored_dynamic_metadata",
        Invalid = "invalid",
        OmittedResponseHeaders = "omitted_response_headers",
        RequestHeaderLimitsReached = "request_header_limits_reached",
        ResponseHeaderLimitsReached = "response_header_limits_reached",
        ShadowDenied = "shadow_denied",
        ShadowError = "shadow_error",
    } gauges []
}
