#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/tpsgap.json, the tpsgap Grafana dashboard.

Run it after changing a panel: python3 deploy/grafana/gen_dashboard.py
"""
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "tpsgap.json")
import json
panels = []
y = 0
pid = 0
def panel(title, exprs, unit="short", w=12, h=8, x=0, kind="timeseries", stack=False, desc=""):
    global pid
    pid += 1
    targets = [{"datasource": {"type": "prometheus", "uid": "prometheus"}, "expr": e, "legendFormat": l, "refId": chr(65 + i), "exemplar": True} for i, (e, l) in enumerate(exprs)]
    p = {"id": pid, "type": kind, "title": title, "description": desc, "datasource": {"type": "prometheus", "uid": "prometheus"},
         "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {"legend": {"displayMode": "list", "placement": "bottom"}}}
    if stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 60}
    panels.append(p)
def row(title):
    global y, pid
    pid += 1
    panels.append({"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1
R = 'run_id=~"$run"'
row("Idle gaps")
panel("gap_fraction per run (final windows)", [(f'llm_gap_fraction{{{R}}}', "{{run_id}}")], "percentunit", desc="Share of each final window when requests waited while in flight was below the cap.")
panel("Gap fraction over the range (counters)", [(f'sum by (run_id) (rate(llm_gap_seconds_total{{{R}}}[$__rate_interval])) / sum by (run_id) (rate(llm_active_seconds_total{{{R}}}[$__rate_interval]))', "{{run_id}}")], "percentunit", x=12, desc="rate(gap) / rate(active): correct over any range and across tpsgap instances.")
y += 8
panel("Gap time by cause", [(f'sum by (cause) (rate(llm_gap_seconds_total{{{R}}}[$__rate_interval]))', "{{cause}}")], "percentunit", stack=True, desc="stall: a freed slot stayed empty past the refill threshold; refill: short handoffs; under_cap: steady below the cap.")
panel("Backlog fraction", [(f'llm_backlog_fraction{{{R}}}', "{{run_id}} (window)"), (f'sum by (run_id) (rate(llm_backlog_seconds_total{{{R}}}[$__rate_interval])) / sum by (run_id) (rate(llm_active_seconds_total{{{R}}}[$__rate_interval]))', "{{run_id}} (counters)")], "percentunit", x=12)
y += 8
row("Throughput and capacity")
panel("System TPS", [(f'llm_system_tps{{{R}}}', "{{run_id}}")], "short", desc="Output tokens of successful requests per second of the window.")
panel("Utilization (in flight / cap)", [(f'llm_utilization{{{R}}}', "{{run_id}}")], "percentunit", x=12, desc="Time average of in-flight / cap; 100 % is the cap.")
y += 8
panel("Success rate", [(f'llm_success_rate{{{R}}}', "{{run_id}}"), (f'sum by (run_id) (rate(llm_requests_total{{{R},outcome="success"}}[$__rate_interval])) / sum by (run_id) (rate(llm_requests_total{{{R}}}[$__rate_interval]))', "{{run_id}} (counters)")], "percentunit", w=8)
panel("Retry rate", [(f'llm_retry_rate{{{R}}}', "{{run_id}}"), (f'sum by (run_id) (rate(llm_retries_total{{{R}}}[$__rate_interval])) / sum by (run_id) (rate(llm_requests_total{{{R}}}[$__rate_interval]))', "{{run_id}} (counters)")], "short", w=8, x=8)
panel("Tokens per second (counters)", [(f'sum by (gen_ai_token_type) (rate(llm_tokens_total{{{R}}}[$__rate_interval]))', "{{gen_ai_token_type}}")], "short", w=8, x=16)
y += 8
row("Latency (successful requests)")
for i, (name, metric) in enumerate([("Queue time", "llm_request_queue_time_seconds"), ("Time to first token", "llm_request_time_to_first_token_seconds"), ("Time per output token", "llm_request_time_per_output_token_seconds")]):
    panel(f"{name} p50 / p90 / p99", [(f'histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{R}}}[$__rate_interval])))', f"p{int(q*100)}") for q in (0.5, 0.9, 0.99)], "s", w=8, x=8 * i)
y += 8
for i, (name, metric, unit) in enumerate([("Stream time", "llm_request_stream_time_seconds", "s"), ("In-flight time", "llm_request_in_flight_time_seconds", "s"), ("Stream TPS per request", "llm_request_stream_tps", "short")]):
    panel(f"{name} p50 / p90 / p99", [(f'histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{R}}}[$__rate_interval])))', f"p{int(q*100)}") for q in (0.5, 0.9, 0.99)], unit, w=8, x=8 * i)
y += 8
panel("End-to-end TPS per request p50", [(f'histogram_quantile(0.5, sum by (le) (rate(llm_request_end_to_end_tps_bucket{{{R}}}[$__rate_interval])))', "p50"), (f'sum(rate(llm_request_end_to_end_tps_sum{{{R}}}[$__rate_interval])) / sum(rate(llm_request_end_to_end_tps_count{{{R}}}[$__rate_interval]))', "mean")], "short", w=24)
y += 8
row("tpsgap itself")
panel("Spans per second", [("sum(rate(tpsgap_spans_received_total[$__rate_interval]))", "received"), ("sum(rate(tpsgap_spans_accepted_total[$__rate_interval]))", "accepted"), ("sum(rate(tpsgap_spans_rejected_total[$__rate_interval]))", "rejected"), ("sum(rate(tpsgap_spans_ignored_total[$__rate_interval]))", "ignored (no run_id)"), ("sum(rate(tpsgap_spans_refused_total[$__rate_interval]))", "refused (retryable)"), ("sum(rate(tpsgap_late_spans_total[$__rate_interval]))", "late")], "short", w=8)
panel("Runs and windows", [("sum(tpsgap_live_runs)", "live runs"), ("sum(rate(tpsgap_windows_exported_total[$__rate_interval]))", "windows/s"), ("sum(rate(tpsgap_runs_finalized_total[$__rate_interval]))", "runs finalized/s")], "short", w=8, x=8)
panel("OTLP export", [("sum(rate(tpsgap_export_sent_total[$__rate_interval]))", "sent"), ("sum(rate(tpsgap_export_errors_total[$__rate_interval]))", "errors"), ("sum(rate(tpsgap_export_dropped_total[$__rate_interval]))", "dropped")], "short", w=8, x=16)
dash = {
    "uid": "tpsgap", "title": "tpsgap: LLM tokens per second and idle gaps", "tags": ["tpsgap", "llm"],
    "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [{"name": "run", "label": "run", "type": "query", "datasource": {"type": "prometheus", "uid": "prometheus"},
        "query": {"query": "label_values(llm_active_seconds_total, run_id)", "refId": "run"}, "definition": "label_values(llm_active_seconds_total, run_id)",
        "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2}]},
    "annotations": {"list": []},
    "panels": panels,
}
json.dump(dash, open(OUT, "w"), indent=2)
open(OUT, "a").write("\n")
