//! Every shipped deployment file is exercised: the alert rules by promtool,
//! the dashboard against the metrics tpsgap really exports.

mod common;

use std::process::Command;

use common::root;

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = root().join("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run)");
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let text =
        String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Metric names (llm_* and tpsgap_*) that an expression or text mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("llm_") || t.starts_with("tpsgap_"))
        .map(str::to_string)
        .collect()
}

/// What a real `tpsgap serve` exposes at /metrics after a run with failures,
/// retries, gaps and a rejected span.
fn exported_names() -> std::collections::BTreeSet<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let server = common::TestServer::start(common::example_config()).await;
        let (http, api) = (server.http, server.api);
        let text = tokio::task::spawn_blocking(move || {
            for f in [
                "examples/small.jsonl",
                "tests/fixtures/two_runs.jsonl",
                "tests/fixtures/bad.jsonl",
            ] {
                for line in std::fs::read_to_string(root().join(f))
                    .expect("fixture")
                    .lines()
                {
                    common::http_post(
                        http,
                        "/v1/traces",
                        &[("Content-Type", "application/json")],
                        line.as_bytes(),
                    );
                }
            }
            common::final_run(api, "example");
            common::http_get(api, "/metrics").1
        })
        .await
        .expect("scrape");
        server.stop().await;
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    })
}

#[test]
fn dashboard_and_rules_query_only_metrics_tpsgap_exports() {
    let exported = exported_names();
    for must in [
        "llm_gap_fraction",
        "llm_gap_seconds_total",
        "llm_request_queue_time_seconds_bucket",
        "tpsgap_spans_rejected_total",
    ] {
        assert!(
            exported.contains(must),
            "{must} missing from /metrics: {exported:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/tpsgap.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        exprs.push(v["definition"].as_str().unwrap_or_default().to_string());
    }
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    let rules =
        std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("rules");
    let mut used = metric_names(&rules);
    for e in &exprs {
        used.extend(metric_names(e));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    // The dashboard covers what the issue lists.
    let all = exprs.join("\n");
    for m in [
        "llm_gap_fraction",
        "llm_backlog_fraction",
        "llm_system_tps",
        "llm_utilization",
        "histogram_quantile",
        "tpsgap_spans_received_total",
        "sum by (cause)",
    ] {
        assert!(all.contains(m), "the dashboard shows {m}");
    }
}

/// The YAML files as JSON (parsed by PyYAML in the test venv).
fn yaml(paths: &[&str]) -> serde_json::Value {
    let out = Command::new(common::python())
        .arg(root().join("tests/python/yaml2json.py"))
        .args(paths)
        .current_dir(root())
        .output()
        .expect("python with PyYAML (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args([sub, "--help"])
        .output()
        .expect("tpsgap --help");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The port of a `[default: HOST:PORT]` in `--help`.
fn default_port(help: &str, flag: &str) -> String {
    let line = help
        .lines()
        .skip_while(|l| !l.contains(flag))
        .find(|l| l.contains("[default:"))
        .unwrap_or_else(|| panic!("{flag} has a default"));
    let d = line
        .split("[default: ")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches(']');
    d.rsplit(':').next().unwrap_or("").to_string()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Each `--flag` of an argument list is one the subcommand accepts.
fn assert_flags_exist(args: &[String], help: &str, what: &str) {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap_or(a);
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what}: unknown flag {flag}"
        );
    }
}

#[test]
fn compose_collector_and_dockerfile_agree_with_the_cli() {
    let serve = help("serve");
    let (grpc, http, api) = (
        default_port(&serve, "--grpc-listen"),
        default_port(&serve, "--http-listen"),
        default_port(&serve, "--api-listen"),
    );
    assert_eq!(
        (grpc.as_str(), http.as_str(), api.as_str()),
        ("4317", "4318", "9464")
    );
    let files = yaml(&[
        "docker-compose.yml",
        "deploy/otel-collector-config.yaml",
        "deploy/prometheus/prometheus.yml",
        "deploy/grafana/provisioning/datasources/datasources.yml",
        "deploy/grafana/provisioning/dashboards/dashboards.yml",
    ]);
    let compose = &files["docker-compose.yml"]["services"];
    let col = &files["deploy/otel-collector-config.yaml"];

    // tpsgap's service listens on the default ports and pushes to the
    // Collector's tpsgap receiver.
    let cmd = strings(&compose["tpsgap"]["command"]);
    assert_eq!(cmd[0], "serve");
    assert_flags_exist(&cmd, &serve, "compose tpsgap");
    let arg = |name: &str| {
        cmd.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("compose tpsgap sets {name}"))
            .to_string()
    };
    assert_eq!(arg("--grpc-listen"), format!("0.0.0.0:{grpc}"));
    assert_eq!(arg("--http-listen"), format!("0.0.0.0:{http}"));
    assert_eq!(arg("--api-listen"), format!("0.0.0.0:{api}"));
    let back = col["receivers"]["otlp/tpsgap"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .expect("otlp/tpsgap receiver");
    assert_eq!(
        arg("--otlp-endpoint"),
        format!(
            "http://otel-collector:{}",
            back.rsplit(':').next().unwrap_or("")
        )
    );
    assert!(strings(&compose["tpsgap"]["ports"]).contains(&format!("{api}:{api}")));

    // The Collector exports traces to tpsgap's gRPC port with gzip, retries
    // and a sending queue, next to the trace backend.
    let exp = &col["exporters"]["otlp/tpsgap"];
    assert_eq!(exp["endpoint"], format!("tpsgap:{grpc}"));
    assert_eq!(exp["compression"], "gzip");
    assert_eq!(exp["retry_on_failure"]["enabled"], true);
    assert_eq!(exp["sending_queue"]["enabled"], true);
    let pipes = &col["service"]["pipelines"];
    assert_eq!(
        strings(&pipes["traces"]["exporters"]),
        vec!["otlp/jaeger", "otlp/tpsgap"]
    );
    assert_eq!(
        strings(&pipes["metrics/tpsgap"]["receivers"]),
        vec!["otlp/tpsgap"]
    );
    assert_eq!(
        strings(&pipes["metrics/tpsgap"]["exporters"]),
        vec!["prometheus"]
    );
    assert!(
        !strings(&pipes["traces/tpsgap"]["exporters"]).contains(&"otlp/tpsgap".to_string()),
        "no loop"
    );
    for (name, p) in pipes.as_object().expect("pipelines") {
        for r in strings(&p["receivers"]) {
            assert!(
                col["receivers"].get(&r).is_some(),
                "{name}: receiver {r} defined"
            );
        }
        for e in strings(&p["exporters"]) {
            assert!(
                col["exporters"].get(&e).is_some(),
                "{name}: exporter {e} defined"
            );
        }
    }
    let col_ports = strings(&compose["otel-collector"]["ports"]);
    assert!(
        col_ports.contains(&"4317:4317".to_string())
            && col_ports.contains(&"4318:4318".to_string())
    );

    // Prometheus scrapes tpsgap's API port and the Collector's exporter.
    let prom = &files["deploy/prometheus/prometheus.yml"];
    let targets: Vec<String> = prom["scrape_configs"]
        .as_array()
        .expect("scrape configs")
        .iter()
        .flat_map(|s| strings(&s["static_configs"][0]["targets"]))
        .collect();
    let exporter_port = col["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .and_then(|e| e.rsplit(':').next())
        .unwrap_or("");
    assert_eq!(
        targets,
        vec![
            format!("tpsgap:{api}"),
            format!("otel-collector:{exporter_port}")
        ]
    );
    assert_eq!(strings(&prom["rule_files"]), vec!["alerts.yml"]);

    // Grafana: the Prometheus datasource links exemplars to Jaeger, and the
    // dashboards folder is the one compose mounts.
    let ds = &files["deploy/grafana/provisioning/datasources/datasources.yml"]["datasources"];
    assert_eq!(ds[0]["url"], "http://prometheus:9090");
    assert_eq!(
        ds[0]["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"],
        ds[1]["uid"]
    );
    let path = files["deploy/grafana/provisioning/dashboards/dashboards.yml"]["providers"][0]
        ["options"]["path"]
        .clone();
    assert!(strings(&compose["grafana"]["volumes"])
        .iter()
        .any(|v| v.ends_with(&format!(":{}:ro", path.as_str().unwrap_or("?")))));

    // The simulator sends real OTLP to the Collector with valid flags.
    let sim = strings(&compose["simulator"]["command"]);
    assert_eq!(sim[0], "simulate");
    assert_flags_exist(&sim, &help("simulate"), "compose simulator");
    assert!(sim.contains(&format!("--endpoint=http://otel-collector:{grpc}")));

    // The Dockerfile: multi-stage, non-root, the default ports exposed.
    let docker = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert_eq!(
        docker.lines().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "multi-stage"
    );
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(user.trim() != "root" && user.trim() != "0");
    let expose = docker
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    assert_eq!(
        expose.split_whitespace().collect::<Vec<_>>(),
        vec![grpc.as_str(), http.as_str(), api.as_str()]
    );
    assert!(docker.contains("cargo build --release --locked --bin tpsgap"));
}

#[test]
fn compose_prometheus_config_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
