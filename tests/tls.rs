//! TLS and mTLS on the receivers and the API, with real clients: the Python
//! SDK exporters (gRPC and HTTP) and a TLS HTTP client, certificates made by
//! openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{example_run, python, root, TestServer};
use tpsgap::tls::TlsFiles;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    for name in ["ca", "server", "client"] {
        let mut a = vec!["genpkey"];
        a.extend(ec);
        a.extend(["-out", Box::leak(format!("{name}.key").into_boxed_str())]);
        openssl(dir, &a);
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=tpsgap test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [("server", "san.ext"), ("client", "client.ext")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &pem,
            ],
        );
    }
}

const GET_RUNS: &str = r#"
import sys, requests
d = sys.argv[1]
cert = (d + "/client.pem", d + "/client.key") if sys.argv[3] == "with-cert" else None
try:
    r = requests.get(sys.argv[2], verify=d + "/ca.pem", cert=cert, timeout=10)
    print(r.status_code)
    print(r.text)
except requests.exceptions.RequestException as e:
    print("refused", type(e).__name__)
"#;

fn https_get(dir: &Path, url: &str, with_cert: bool) -> (String, String) {
    let out = Command::new(python())
        .args([
            "-c",
            GET_RUNS,
            &dir.to_string_lossy(),
            url,
            if with_cert { "with-cert" } else { "none" },
        ])
        .output()
        .expect("python requests");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    (first.to_string(), rest.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_real_clients() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tpsgap-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    make_certs(&dir);
    let mut cfg = common::example_config();
    cfg.tls = Some(TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: Some(dir.join("ca.pem")),
    });
    let server = TestServer::start(cfg).await;
    let (grpc, http, api) = (server.grpc, server.http, server.api);
    let d = dir.clone();
    tokio::task::spawn_blocking(move || {
        let send = |proto: &str, ep: String, run: &str, client_cert: bool| {
            let mut cmd = Command::new(python());
            cmd.arg(root().join("tests/python/send_example.py"))
                .args(["--protocol", proto, "--endpoint", &ep, "--run-id", run])
                .env("OTEL_EXPORTER_OTLP_CERTIFICATE", d.join("ca.pem"))
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
                // requests prefers these over the exporter's own CA file.
                .env_remove("REQUESTS_CA_BUNDLE")
                .env_remove("CURL_CA_BUNDLE");
            if client_cert {
                cmd.env("OTEL_EXPORTER_OTLP_CLIENT_KEY", d.join("client.key"))
                    .env(
                        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                        d.join("client.pem"),
                    );
            }
            let out = cmd.output().expect("python");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        send("grpc", format!("https://{grpc}"), "tls-grpc", true);
        send(
            "http",
            format!("https://{http}/v1/traces"),
            "tls-http",
            true,
        );
        // Without a client certificate the handshake fails: nothing arrives.
        send("grpc", format!("https://{grpc}"), "no-cert-grpc", false);
        send(
            "http",
            format!("https://{http}/v1/traces"),
            "no-cert-http",
            false,
        );
        for run in ["tls-grpc", "tls-http"] {
            let v = common::wait_for(Duration::from_secs(20), || {
                let (code, body) = https_get(
                    &d,
                    &format!("https://127.0.0.1:{}/api/v1/runs/{run}", api.port()),
                    true,
                );
                let mut v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (code == "200" && v["state"] == "final").then(|| {
                    v.as_object_mut().map(|o| o.remove("state"));
                    v
                })
            })
            .expect("final over TLS");
            common::assert_same(&v, &example_run(run));
        }
        let (code, body) = https_get(
            &d,
            &format!("https://127.0.0.1:{}/api/v1/runs", api.port()),
            true,
        );
        assert_eq!(code, "200");
        assert!(
            !body.contains("no-cert"),
            "runs sent without a client certificate were refused: {body}"
        );
        let (code, _) = https_get(
            &d,
            &format!("https://127.0.0.1:{}/api/v1/runs", api.port()),
            false,
        );
        assert!(
            code.starts_with("refused"),
            "the API requires a client certificate: {code}"
        );
        // Plain HTTP to a TLS port gets nowhere.
        assert_ne!(common::http_get(api, "/healthz").0, 200);
    })
    .await
    .expect("checks");
    server.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
