//! `serve` configuration: flags beat `TPSGAP_*` variables, which beat the
//! `--config` TOML file; unknown keys are errors.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{final_run, free_ports, http_get, http_post, root, ServeProc};

#[test]
fn flags_env_and_file_in_that_order() {
    let dir = std::env::temp_dir().join(format!("tpsgap-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cfg = dir.join("tpsgap.toml");
    // The addresses are configured, so chosen before the server binds them:
    // another program may take one in between, and then they are chosen
    // again.
    let start = || {
        let [grpc, http, file_api, env_api] = free_ports();
        std::fs::write(
            &cfg,
            format!(
                "# every key is a serve flag\napi-listen = \"127.0.0.1:{file_api}\"\nhttp_listen = \"127.0.0.1:{http}\"\nwindow = \"60s\"\nstep = \"5s\"\nrun-idle-timeout = \"1s\"\n"
            ),
        )
        .expect("write");
        let p = ServeProc::try_spawn(
            Command::new(env!("CARGO_BIN_EXE_tpsgap"))
                .args(["serve", "--config"])
                .arg(&cfg)
                .args([
                    "--grpc-listen",
                    &format!("127.0.0.1:{grpc}"),
                    "--window",
                    "10s",
                ])
                .env("TPSGAP_API_LISTEN", format!("127.0.0.1:{env_api}"))
                .env("TPSGAP_STEP", "5s"),
        );
        (p, [grpc, http, file_api, env_api])
    };
    let mut attempt = 0;
    let (p, [grpc, http, file_api, env_api]) = loop {
        attempt += 1;
        match start() {
            (Ok(p), ports) => break (p, ports),
            (Err(log), _) if attempt < 3 && log.contains("Address already in use") => {}
            (Err(log), _) => panic!("tpsgap serve did not start:\n{log}"),
        }
    };
    let api: SocketAddr = format!("127.0.0.1:{env_api}").parse().expect("addr");
    assert_eq!(
        p.api, api,
        "the environment's API address wins over the file's"
    );
    assert_eq!(p.grpc.port(), grpc, "the flag's gRPC address");
    assert_eq!(p.http.port(), http, "the file's HTTP address");
    let other: SocketAddr = format!("127.0.0.1:{file_api}").parse().expect("addr");
    assert_eq!(
        http_get(other, "/healthz").0,
        0,
        "nothing listens on the file's address"
    );
    let body = std::fs::read(root().join("examples/small.jsonl")).expect("example");
    let (code, _, _) = http_post(
        p.http,
        "/v1/traces",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(code, 200, "the file's HTTP address is used");
    // --window 10s (flag) beats the file's 60s; step 5s; idle 1s from the file.
    let run = final_run(api, "example");
    let spans: Vec<(f64, f64)> = run["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| {
            (
                w["start_unix_s"].as_f64().unwrap_or(0.0),
                w["end_unix_s"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let t0 = 1_793_491_200.0;
    assert_eq!(
        spans,
        vec![(t0 - 5.0, t0 + 5.0), (t0, t0 + 10.0), (t0 + 5.0, t0 + 15.0)]
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_config_keys_and_bad_values_are_errors() {
    let dir = std::env::temp_dir().join(format!("tpsgap-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "windw = \"5s\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key \"windw\""), "{err}");
    std::fs::write(&cfg, "window = \"soon\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "invalid value is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
    std::fs::remove_dir_all(&dir).ok();
}
