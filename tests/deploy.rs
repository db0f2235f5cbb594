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
