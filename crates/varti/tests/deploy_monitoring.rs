//! The monitoring files in `deploy/`: the Prometheus alert rules pass `promtool` (syntax and
//! their unit tests), and every metric they or the Grafana dashboard name is exported by a
//! running `varti serve`.

mod serve_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serve_support::*;

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Runs promtool; it is installed by `.ci/deps` (Debian's prometheus package).
fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("promtool cannot run ({e}): run .ci/deps, which installs it"))
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "varti-alerts.yml"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = promtool(&["test", "rules", "varti-alerts.test.yml"]);
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// Every `varti_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("varti_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alerts_and_dashboard_name_only_metrics_that_serve_exports() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/varti-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy().join("grafana/varti-dashboard.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push_str(target["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs.push_str(dashboard["templating"].to_string().as_str());

    // The alerts the operations team needs are all there.
    for alert in [
        "VartiCertificateExpiresSoon",
        "VartiMessagesFailed",
        "VartiSendBacklogGrowing",
        "VartiInstanceNotReady",
        "VartiStoreUnreachable",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        dir.path(),
        &plain_config("[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n"),
        &["--insecure-http"],
    );
    let metrics = plain_get(served.ops, "/metrics");
    assert_eq!(metrics.status, 200);
    // The series names a query can select: each family's TYPE line gives them (a labelled
    // family may have no series yet, e.g. refusals before the first one).
    let mut exported = BTreeSet::new();
    for line in metrics.body.lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    let named: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&exprs))
        .collect();
    assert!(named.len() >= 8, "{named:?}");
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );

    // The readiness and store gauges tell the truth on a healthy instance.
    assert!(
        metrics.body.contains("varti_ready{condition=\"store\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("varti_ready{condition=\"pmodes\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("varti_store_up 1"),
        "{}",
        metrics.body
    );
}
