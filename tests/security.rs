//! `--auth-token-file`: a wrong or missing token is refused on every
//! endpoint; the real SDK exporters get in with the token.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{example_run, http_post, python, root, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tpsgap::serve::{self, Listeners, ServeConfig};

/// GET with an optional authorization header: the status code.
fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_everywhere() {
    let dir = std::env::temp_dir().join(format!("tpsgap-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "  s3cret-token\n").expect("token");
    let mut cfg = common::example_config();
    cfg.auth_token_file = Some(token_file.clone());
    let server = TestServer::start(cfg).await;
    let (grpc, http, api) = (server.grpc, server.http, server.api);

    // gRPC: no token, a wrong one, then the right one.
    let req = || {
        tpsgap::testutil::export(vec![tpsgap::testutil::request_span(
            "auth",
            "a",
            &[(tpsgap::model::Stamp::Queued, 1_800_000_000_000_000_000)],
            vec![],
            1,
        )])
    };
    let mut c = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    assert_eq!(
        c.export(req()).await.expect_err("no token").code(),
        tonic::Code::Unauthenticated
    );
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("meta"));
    assert_eq!(
        c.export(r).await.expect_err("wrong token").code(),
        tonic::Code::Unauthenticated
    );
    let mut r = tonic::Request::new(req());
    r.metadata_mut().insert(
        "authorization",
        "Bearer s3cret-token".parse().expect("meta"),
    );
    c.export(r).await.expect("right token");

    tokio::task::spawn_blocking(move || {
        let body = std::fs::read(root().join("examples/small.jsonl")).expect("example");
        let ct = ("Content-Type", "application/json");
        assert_eq!(http_post(http, "/v1/traces", &[ct], &body).0, 401);
        assert_eq!(
            http_post(
                http,
                "/v1/traces",
                &[ct, ("Authorization", "Bearer nope")],
                &body
            )
            .0,
            401
        );
        assert_eq!(
            http_post(
                http,
                "/v1/traces",
                &[ct, ("Authorization", "Bearer s3cret-token")],
                &body
            )
            .0,
            200
        );
        for path in [
            "/",
            "/runs/example",
            "/api/v1/runs",
            "/api/v1/runs/example",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert_eq!(get(api, path, None), 401, "{path} without a token");
            assert_eq!(
                get(api, path, Some("Bearer s3cret-tokenX")),
                401,
                "{path} with a wrong token"
            );
            assert_eq!(
                get(api, path, Some("Bearer s3cret-token")),
                200,
                "{path} with the token"
            );
        }
        // The real SDK exporters send the token from OTEL_EXPORTER_OTLP_HEADERS.
        for (proto, ep, run) in [
            ("grpc", format!("http://{grpc}"), "auth-grpc"),
            ("http", format!("http://{http}/v1/traces"), "auth-http"),
        ] {
            let out = Command::new(python())
                .arg(root().join("tests/python/send_example.py"))
                .args(["--protocol", proto, "--endpoint", &ep, "--run-id", run])
                .env(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20s3cret-token",
                )
                .output()
                .expect("python");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await
    .expect("checks");
    // Reading the results needs the token too.
    let runs = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let fetch = |id: &str| {
            common::wait_for(Duration::from_secs(20), || {
                let mut s = std::net::TcpStream::connect(api).ok()?;
                write!(s, "GET /api/v1/runs/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\nConnection: close\r\n\r\n").ok()?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).ok()?;
                let body = buf.split_once("\r\n\r\n")?.1.to_string();
                let mut v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (v["state"] == "final").then(|| {
                    v.as_object_mut().map(|o| o.remove("state"));
                    v
                })
            })
            .expect("final")
        };
        (fetch("auth-grpc"), fetch("auth-http"))
    })
    .await
    .expect("fetch");
    common::assert_same(&runs.0, &example_run("auth-grpc"));
    common::assert_same(&runs.1, &example_run("auth-http"));
    server.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_empty_or_missing_token_file_is_an_error() {
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let cfg = ServeConfig {
        auth_token_file: Some(std::path::PathBuf::from("/nonexistent/token")),
        ..ServeConfig::default()
    };
    let err = serve::run(
        cfg,
        Listeners {
            grpc: bind().await,
            http: bind().await,
            api: bind().await,
        },
        async {},
    )
    .await
    .expect_err("refuses to start");
    assert!(
        err.to_string()
            .contains("--auth-token-file /nonexistent/token"),
        "{err}"
    );
}
