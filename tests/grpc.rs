//! gRPC through the real binary with tonic as both the client and the server: the four
//! call kinds, status and metadata in trailers, the proxy's own gRPC-shaped errors, and
//! `grpc-timeout` honoured through `max_stream_duration.grpc_timeout_header_max`.

mod support;

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

pub mod echo {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/ringside.test.echo.rs"));
}

use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};
use echo::Msg;

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Svc;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let msg = req.into_inner();
        if msg.text == "fail" {
            return Err(Status::invalid_argument("text must not be 'fail'"));
        }
        if let Some(ms) = msg.text.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        let mut resp = Response::new(Msg {
            text: format!("echo {}", msg.text),
            count: msg.count,
        });
        resp.metadata_mut()
            .insert("x-served-by", "tonic".parse().unwrap());
        Ok(resp)
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        req: Request<Msg>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let msg = req.into_inner();
        // "slowly": one message every 200 ms.
        let gap = if msg.text == "slowly" { 200 } else { 0 };
        let items = (0..msg.count).map(move |i| {
            Ok(Msg {
                text: format!("{}-{i}", msg.text),
                count: i,
            })
        });
        let stream = tokio_stream::iter(items);
        if gap == 0 {
            return Ok(Response::new(Box::pin(stream)));
        }
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::throttle(
            stream,
            Duration::from_millis(gap),
        ))))
    }

    async fn client_stream(&self, req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        let mut stream = req.into_inner();
        let mut text = String::new();
        let mut count = 0;
        while let Some(m) = stream.next().await {
            text.push_str(&m?.text);
            count += 1;
        }
        Ok(Response::new(Msg { text, count }))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        req: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let stream = req.into_inner();
        Ok(Response::new(Box::pin(stream.map(|m| {
            m.map(|m| Msg {
                text: format!("re: {}", m.text),
                count: m.count,
            })
        }))))
    }
}

/// A tonic server on an ephemeral port.
async fn grpc_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    addr
}

async fn client(proxy: &Proxy) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

fn msg(text: &str, count: u32) -> Msg {
    Msg {
        text: text.into(),
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_pass_through_with_status_and_metadata() {
    let upstream = grpc_server().await;
    for driver in drivers() {
        let clusters = format!(
            "[{}]",
            cluster("echo", &[upstream], "http2_protocol_options: {},")
        );
        let proxy = Proxy::start(&config("", &all_to("echo"), &clusters), &one_core(driver)).await;
        let mut c = client(&proxy).await;

        // Unary, with response metadata.
        let resp = c.unary(msg("hello", 7)).await.unwrap();
        assert_eq!(
            resp.metadata().get("x-served-by").unwrap(),
            "tonic",
            "{driver}"
        );
        assert!(resp
            .metadata()
            .contains_key("x-envoy-upstream-service-time"));
        assert_eq!(resp.into_inner(), msg("echo hello", 7));

        // A status the upstream sets crosses intact (trailers-only response).
        let err = c.unary(msg("fail", 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{driver}: {err:?}");
        assert_eq!(err.message(), "text must not be 'fail'");

        // Server streaming: 500 messages, in order, then OK in the trailers.
        let mut stream = c
            .server_stream(msg("item", 500))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(m) = stream.message().await.unwrap() {
            assert_eq!(m.text, format!("item-{n}"));
            n += 1;
        }
        assert_eq!(n, 500, "{driver}");

        // Client streaming.
        let parts: Vec<Msg> = (0..300).map(|i| msg(&format!("{i},"), i)).collect();
        let want: String = (0..300).map(|i| format!("{i},")).collect();
        let resp = c
            .client_stream(tokio_stream::iter(parts))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.count, 300, "{driver}");
        assert_eq!(resp.text, want);

        // Bidirectional: each answer arrives before the next message is sent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let mut answers = c
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..20 {
            tx.send(msg(&format!("ping {i}"), i)).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(5), answers.message())
                .await
                .expect("answer before the next message")
                .unwrap()
                .unwrap();
            assert_eq!(m.text, format!("re: ping {i}"), "{driver}");
        }
        drop(tx);
        assert!(answers.message().await.unwrap().is_none());

        // Many concurrent calls on one client connection.
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let mut c = c.clone();
                tokio::spawn(async move { c.unary(msg(&format!("c{i}"), i)).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let m = call.await.unwrap().unwrap().into_inner();
            assert_eq!(m.text, format!("echo c{i}"));
        }
        assert_eq!(proxy.stat("cluster.echo.upstream_rq_total").await, 55);
        assert_eq!(proxy.stat("cluster.echo.upstream_rq_completed").await, 55);
        assert_eq!(proxy.stat("http.ingress.downstream_rq_active").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_and_deadlines_are_grpc_statuses() {
    let upstream = grpc_server().await;
    let dead = local_socket().local_addr().unwrap(); // bound, never listening: refused
    for driver in drivers() {
        let clusters = format!(
            "[{}, {}]",
            cluster("echo", &[upstream], "http2_protocol_options: {},"),
            cluster("gone", &[dead], "http2_protocol_options: {},")
        );
        // Routes by gRPC method path. /Unary honours grpc-timeout, capped at 100 ms;
        // /ServerStream has a 300 ms stream limit; /Bidi goes to
        // a dead cluster.
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /ringside.test.echo.Echo/Unary},
             route: {cluster: echo, timeout: 0s,
                     max_stream_duration: {max_stream_duration: 0s, grpc_timeout_header_max: 0.1s}}},
            {match: {prefix: /ringside.test.echo.Echo/ServerStream},
             route: {cluster: echo, max_stream_duration: {max_stream_duration: 0.3s}}},
            {match: {prefix: /}, route: {cluster: gone}}]}]";
        let proxy = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        let mut c = client(&proxy).await;

        // UNAVAILABLE when the upstream cannot be reached.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let err = c
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{driver}: {err:?}");
        assert!(
            err.message().starts_with("upstream connect error"),
            "{err:?}"
        );

        // grpc-timeout (2 s) is honoured by the proxy, capped by the route at 100 ms (the
        // client would only give up at 2 s, the upstream would take 3 s).
        let mut req = Request::new(msg("sleep:3000", 0));
        req.set_timeout(Duration::from_secs(2));
        let t = Instant::now();
        let err = c.unary(req).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{driver}: {err:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Without grpc-timeout the same route has no limit at all.
        let resp = c.unary(msg("sleep:500", 1)).await.unwrap().into_inner();
        assert_eq!(resp.text, "echo sleep:500");

        // max_stream_duration ends a stream that outlives it, even mid-response: the
        // client sees the stream end with an error, not a clean OK.
        let mut stream = c
            .server_stream(msg("slowly", 10))
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        let outcome = loop {
            match stream.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => break Ok(got),
                Err(e) => break Err(e),
            }
        };
        assert!(outcome.is_err(), "{driver}: {outcome:?}");
        assert!(got < 10, "{driver}: {got}");
        // A short stream on the same route finishes within the limit.
        let mut stream = c.server_stream(msg("quick", 3)).await.unwrap().into_inner();
        let mut got = 0;
        while stream.message().await.unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, 3, "{driver}");

        assert_eq!(
            proxy
                .stat("http.ingress.downstream_rq_max_duration_reached")
                .await,
            2,
            "{driver}"
        );
        assert_eq!(proxy.stat("http.ingress.downstream_rq_active").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_default_filters_count_grpc_calls_and_abort_with_a_grpc_status() {
    let upstream = grpc_server().await;
    // istiod's HTTP filter list for a sidecar (telemetry filters aside): grpc_stats as it
    // sends it, an empty fault filter, cors; and a route whose fault aborts with
    // UNAVAILABLE.
    let filters = [
        "          - name: envoy.filters.http.grpc_stats\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true, stats_for_all_methods: false}",
        "          - name: envoy.filters.http.fault\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}",
        "          - name: envoy.filters.http.cors\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}",
    ]
    .join("\n");
    let vhosts = r#"[{name: all, domains: ['*'], routes: [
  {match: {prefix: /ringside.test.echo.Echo/ServerStream}, route: {cluster: echo},
   typed_per_filter_config: {envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {grpc_status: 14, percentage: {numerator: 100}}}}},
  {match: {prefix: /}, route: {cluster: echo}}]}]"#;
    let clusters = format!(
        "[{}]",
        cluster("echo", &[upstream], "http2_protocol_options: {},")
    );
    for driver in drivers() {
        let proxy = Proxy::start(
            &config_with_filters("", &filters, vhosts, &clusters),
            &one_core(driver),
        )
        .await;
        let (_, stats) = proxy.admin_get("/stats").await;
        assert!(
            !stats.contains("cluster.echo.grpc."),
            "listed before use: {stats}"
        );
        let mut c = client(&proxy).await;
        assert_eq!(
            c.unary(msg("a", 1)).await.unwrap().into_inner().text,
            "echo a"
        );
        let err = c.unary(msg("fail", 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // The fault filter's gRPC abort: a trailers-only UNAVAILABLE, no upstream call.
        let err = c.server_stream(msg("x", 3)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{driver}: {err:?}");
        assert_eq!(err.message(), "fault filter abort");
        // Client streaming: three request messages, one response.
        let parts: Vec<Msg> = (0..3).map(|i| msg("p", i)).collect();
        c.client_stream(tokio_stream::iter(parts)).await.unwrap();

        let stat = |name: &'static str| {
            let proxy = &proxy;
            async move { proxy.stat(&format!("cluster.echo.grpc.{name}")).await }
        };
        assert_eq!(proxy.stat_reaching("cluster.echo.grpc.total", 4).await, 4);
        assert_eq!(stat("success").await, 2, "{driver}");
        assert_eq!(stat("failure").await, 2);
        assert_eq!(stat("0").await, 2);
        assert_eq!(stat("3").await, 1);
        assert_eq!(stat("14").await, 1);
        assert_eq!(stat("request_message_count").await, 1 + 1 + 3);
        assert_eq!(stat("response_message_count").await, 1 + 1);
        assert_eq!(proxy.stat("http.ingress.fault.aborts_injected").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_stats_reports_grpc_statuses_and_messages() {
    // istio.stats on two sidecars, a client's (OUTBOUND) and a server's (INBOUND), with
    // and without grpc_stats beside it: each reports each call's grpc-status (trailers, or
    // trailers-only) and its messages each way, from its own side.
    let upstream = grpc_server().await;
    let stats = "          - name: istio.stats\n            typed_config: {\"@type\": type.googleapis.com/stats.PluginConfig}";
    let grpc_stats = "          - name: envoy.filters.http.grpc_stats\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true}";
    let sidecar = |filters: &str, direction: &str, to: std::net::SocketAddr| {
        let clusters = format!(
            "[{}]",
            cluster("echo", &[to], "http2_protocol_options: {},")
        );
        config_with_filters("", filters, &all_to("echo"), &clusters).replace(
            "  - name: main\n",
            &format!("  - name: main\n    traffic_direction: {direction}\n"),
        )
    };
    for filters in [stats.to_string(), format!("{grpc_stats}\n{stats}")] {
        let server =
            Proxy::start(&sidecar(&filters, "INBOUND", upstream), &one_core("legacy")).await;
        let inbound = server.wait_listener("main").await;
        let proxy =
            Proxy::start(&sidecar(&filters, "OUTBOUND", inbound), &one_core("legacy")).await;
        let mut c = client(&proxy).await;
        c.unary(msg("a", 1)).await.unwrap();
        assert_eq!(
            c.unary(msg("fail", 0)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let parts: Vec<Msg> = (0..3).map(|i| msg("p", i)).collect();
        c.client_stream(tokio_stream::iter(parts)).await.unwrap();
        let mut s = c.server_stream(msg("s", 4)).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(m) = s.next().await {
            m.unwrap();
            n += 1;
        }
        assert_eq!(n, 4);
        for (sidecar, reporter) in [(&proxy, "source"), (&server, "destination")] {
            let mut prom = String::new();
            for _ in 0..100 {
                prom = sidecar.admin_get("/stats/prometheus").await.1;
                if prom.contains("grpc_response_status=\"3\"")
                    && prom.matches("grpc_response_status=\"0\"").count() > 0
                    && prom.contains("istio_response_messages_total{")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let reporter = format!("reporter=\"{reporter}\"");
            let value = |metric: &str, has: &[&str]| -> Vec<u64> {
                prom.lines()
                    .filter(|l| l.starts_with(&format!("{metric}{{")))
                    .filter(|l| l.contains(&reporter) && has.iter().all(|h| l.contains(h)))
                    .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                    .collect()
            };
            let ok = [
                "request_protocol=\"grpc\"",
                "response_code=\"200\"",
                "grpc_response_status=\"0\"",
            ];
            assert_eq!(
                value("istio_requests_total", &ok),
                vec![3],
                "{reporter} {filters}\n{prom}"
            );
            let failed = ["request_protocol=\"grpc\"", "grpc_response_status=\"3\""];
            assert_eq!(value("istio_requests_total", &failed), vec![1], "{prom}");
            // The message counters carry the first 20 labels only (no request_protocol).
            let reqs = value("istio_request_messages_total", &[]);
            assert_eq!(reqs, vec![1 + 1 + 3 + 1], "{reporter}\n{prom}");
            let resps = value("istio_response_messages_total", &[]);
            assert_eq!(resps, vec![1 + 1 + 4], "{reporter}\n{prom}");
            assert!(
                !prom
                    .lines()
                    .any(|l| l.starts_with("istio_request_messages_total{")
                        && l.contains("request_protocol")),
                "{prom}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_read_grpc_statuses_and_filter_on_them() {
    // %GRPC_STATUS% in its three forms: from trailers, from a trailers-only answer, and
    // from the proxy's own gRPC answer (no route); grpc_status_filter keeps the failures.
    let upstream = grpc_server().await;
    let dir = temp_dir();
    let all = dir.join("all.log");
    let failed = dir.join("failed.log");
    let fmt = "%REQ(:PATH)% %GRPC_STATUS% %GRPC_STATUS(NUMBER)% %GRPC_STATUS(SNAKE_STRING)% %RESP(CONTENT-TYPE)%\n";
    let file =
        "\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
    let extra = format!(
        r#"          access_log:
          - name: all
            typed_config: {{{file}, path: "{}", log_format: {{text_format_source: {{inline_string: "{}"}}}}}}
          - name: failed
            filter: {{grpc_status_filter: {{statuses: [OK, UNIMPLEMENTED], exclude: true}}}}
            typed_config: {{{file}, path: "{}", log_format: {{text_format_source: {{inline_string: "%REQ(:PATH)% %GRPC_STATUS%\n"}}}}}}"#,
        all.display(),
        fmt.replace('\n', "\\n"),
        failed.display()
    );
    let vhosts = r#"[{name: all, domains: ["*"], routes: [{match: {prefix: "/ringside.test.echo.Echo/Unary"}, route: {cluster: echo}}, {match: {prefix: "/ringside.test.echo.Echo/ServerStream"}, route: {cluster: echo}}]}]"#;
    let clusters = format!(
        "[{}]",
        cluster("echo", &[upstream], "http2_protocol_options: {},")
    );
    let proxy = Proxy::start(&config(&extra, vhosts, &clusters), &one_core("legacy")).await;
    let mut c = client(&proxy).await;
    c.unary(msg("a", 1)).await.unwrap();
    assert_eq!(
        c.unary(msg("fail", 0)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut s = c.server_stream(msg("s", 2)).await.unwrap().into_inner();
    while let Some(m) = s.next().await {
        m.unwrap();
    }
    // No route: the proxy answers with gRPC's UNIMPLEMENTED itself.
    assert_eq!(
        c.bidi(tokio_stream::iter(vec![msg("x", 0)]))
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
    let lines = wait_lines(&all, 4).await;
    assert_eq!(
        lines,
        [
            "/ringside.test.echo.Echo/Unary OK 0 OK application/grpc",
            "/ringside.test.echo.Echo/Unary InvalidArgument 3 INVALID_ARGUMENT application/grpc",
            "/ringside.test.echo.Echo/ServerStream OK 0 OK application/grpc",
            "/ringside.test.echo.Echo/Bidi Unimplemented 12 UNIMPLEMENTED application/grpc",
        ]
    );
    assert_eq!(
        wait_lines(&failed, 1).await,
        ["/ringside.test.echo.Echo/Unary InvalidArgument"]
    );
}
