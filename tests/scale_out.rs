//! Scale-out: runs split across two `tpsgap serve` processes the way the
//! Collector's `load_balancing` exporter routes them (routing_key:
//! attributes, by run id; spans without one by trace id). The union of the
//! two instances' per-run reports equals one `analyze` of the whole input.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{assert_same, final_run, http_get, http_post, root, ServeProc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as AnyV, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use serde_json::Value;

const INPUTS: [&str; 3] = [
    "examples/small.jsonl",
    "tests/fixtures/multispan.jsonl",
    "tests/fixtures/two_runs.jsonl",
];

fn run_of(attrs: &[KeyValue]) -> Option<String> {
    ["run_id", "run.id"].iter().find_map(|k| {
        attrs.iter().find(|kv| kv.key == *k).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                AnyV::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        })
    })
}

/// FNV-1a: a stand-in for the exporter's consistent hash ring.
fn ring(key: &[u8], n: u64) -> usize {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n) as usize
}

/// Splits each request's spans between two instances by run id (span, then
/// resource), or by trace id when a span has none.
fn route(req: &ExportTraceServiceRequest) -> [ExportTraceServiceRequest; 2] {
    let mut out = [
        ExportTraceServiceRequest::default(),
        ExportTraceServiceRequest::default(),
    ];
    for rs in &req.resource_spans {
        let res_attrs = rs
            .resource
            .as_ref()
            .map(|r| r.attributes.clone())
            .unwrap_or_default();
        let mut parts: [ResourceSpans; 2] = [
            ResourceSpans {
                resource: rs.resource.clone(),
                ..Default::default()
            },
            ResourceSpans {
                resource: rs.resource.clone(),
                ..Default::default()
            },
        ];
        for ss in &rs.scope_spans {
            let mut scoped: [ScopeSpans; 2] = [
                ScopeSpans {
                    scope: ss.scope.clone(),
                    ..Default::default()
                },
                ScopeSpans {
                    scope: ss.scope.clone(),
                    ..Default::default()
                },
            ];
            for span in &ss.spans {
                let key = run_of(&span.attributes)
                    .or_else(|| run_of(&res_attrs))
                    .map_or_else(|| span.trace_id.clone(), String::into_bytes);
                scoped[ring(&key, 2)].spans.push(span.clone());
            }
            for (p, s) in parts.iter_mut().zip(scoped) {
                if !s.spans.is_empty() {
                    p.scope_spans.push(s);
                }
            }
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if !p.scope_spans.is_empty() {
                o.resource_spans.push(p);
            }
        }
    }
    out
}

fn metric(api: SocketAddr, name: &str) -> f64 {
    common::sample(&http_get(api, "/metrics").1, name).unwrap_or(0.0)
}

#[test]
fn runs_split_across_two_instances_equal_one_analyze() {
    let servers: Vec<ServeProc> = (0..2)
        .map(|_| {
            ServeProc::start([
                "--window",
                "10s",
                "--step",
                "10s",
                "--lateness",
                "1h",
                "--run-idle-timeout",
                "1s",
            ])
        })
        .collect();
    let apis: Vec<SocketAddr> = servers.iter().map(|s| s.api).collect();
    let https: Vec<SocketAddr> = servers.iter().map(|s| s.http).collect();
    let mut owner = std::collections::BTreeMap::new();
    for f in INPUTS {
        for line in std::fs::read_to_string(root().join(f))
            .expect("input")
            .lines()
        {
            let req: ExportTraceServiceRequest = serde_json::from_str(line).expect("OTLP JSON");
            for (i, part) in route(&req).iter().enumerate() {
                for rs in &part.resource_spans {
                    let res = rs
                        .resource
                        .as_ref()
                        .map(|r| r.attributes.clone())
                        .unwrap_or_default();
                    for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                        if let Some(run) = run_of(&span.attributes).or_else(|| run_of(&res)) {
                            owner.insert(run, i);
                        }
                    }
                }
                if part.resource_spans.is_empty() {
                    continue;
                }
                let body = serde_json::to_vec(part).expect("json");
                let (code, _, _) = http_post(
                    https[i],
                    "/v1/traces",
                    &[("Content-Type", "application/json")],
                    &body,
                );
                assert_eq!(code, 200);
            }
        }
    }
    assert!(
        owner.values().any(|i| *i == 0) && owner.values().any(|i| *i == 1),
        "both instances own runs: {owner:?}"
    );

    let mut args = vec!["analyze", "--window", "10s", "--step", "10s"];
    args.extend(INPUTS);
    let out = Command::new(env!("CARGO_BIN_EXE_tpsgap"))
        .args(&args)
        .current_dir(root())
        .output()
        .expect("analyze");
    assert!(out.status.success());
    let whole: Value = serde_json::from_slice(&out.stdout).expect("report");
    let want_runs = whole["runs"].as_array().expect("runs");
    assert_eq!(want_runs.len(), owner.len());
    for want in want_runs {
        let id = want["run_id"].as_str().expect("id");
        assert_same(&final_run(apis[owner[id]], id), want);
    }
    // Spans without a run are counted, once, wherever the ring sent them.
    let ignored: f64 = apis
        .iter()
        .map(|a| metric(*a, "tpsgap_spans_ignored_total"))
        .sum();
    assert_eq!(ignored, whole["ignored_spans"].as_f64().unwrap_or(-1.0));
    assert!(ignored >= 1.0);
}
