//! `webhook inject -f`: the real binary on workload YAML of every supported kind.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

fn testdata(rel: &str) -> String {
    format!("{}/testdata/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn container_names(template_spec: &Value) -> (Vec<String>, Vec<String>) {
    let names = |k: &str| -> Vec<String> {
        template_spec[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    (names("initContainers"), names("containers"))
}

#[test]
fn every_workload_kind_is_injected() {
    let (code, out, err) = run(&["inject", "-f", &testdata("workloads/kinds.yaml")], None);
    assert_eq!(code, 0, "{err}");
    let docs = docs(&out);
    let spec_of = |kind: &str| -> Value {
        let d = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} missing"));
        match kind {
            "Pod" => d["spec"].clone(),
            "CronJob" => d["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => d["spec"]["template"]["spec"].clone(),
        }
    };
    for kind in ["Pod", "StatefulSet", "DaemonSet", "ReplicaSet", "CronJob"] {
        let (init, containers) = container_names(&spec_of(kind));
        assert_eq!(
            init.last().map(String::as_str),
            Some("proxyinit"),
            "{kind}: {init:?}"
        );
        assert_eq!(containers[0], "proxy", "{kind}");
    }
    let (init, _) = container_names(&spec_of("StatefulSet"));
    assert_eq!(init, ["init-perms", "proxyinit"]);
    let (init, containers) = container_names(&spec_of("Job"));
    assert_eq!(init, ["proxyinit", "proxy"], "native sidecar for the Job");
    assert_eq!(containers, ["work"]);
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert!(sts["spec"]["template"]["metadata"]["annotations"]["trellis.dev/status"].is_string());

    let list = docs.iter().find(|d| d["kind"] == "List").unwrap();
    let (_, in_list) = container_names(&list["items"][0]["spec"]);
    assert_eq!(in_list[0], "proxy");
    let (_, host) = container_names(&list["items"][1]["spec"]);
    assert_eq!(host, ["app"], "hostNetwork pod left alone");
    assert!(
        err.contains("Pod host-net: not injected (host_network)"),
        "{err}"
    );

    // Injecting the output again changes nothing.
    let (code, again, _) = run(&["inject", "-f", "-"], Some(&out));
    assert_eq!(code, 0);
    assert_eq!(docs, self::docs(&again));
}

#[test]
fn other_documents_pass_through() {
    let (code, out, _) = run(
        &["inject", "-f", &testdata("workloads/deployment.yaml")],
        None,
    );
    assert_eq!(code, 0);
    let docs = docs(&out);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["kind"], "Service");
    assert_eq!(docs[1]["spec"]["ports"][0]["port"], 8080);
    let args = &docs[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--max-connections=10"),
        "{args}"
    );
}

#[test]
fn bad_yaml_exits_2_naming_file_and_document() {
    let (code, _, err) = run(
        &["inject", "-f", "-"],
        Some("kind: Pod\n---\nkind: [unclosed\n"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("<stdin>: document 2: not valid YAML"), "{err}");

    let (code, _, err) = run(&["inject", "-f", "/nonexistent/x.yaml"], None);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/x.yaml"), "{err}");

    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    trellis.dev/max-requests: lots\nspec:\n  containers: [{name: a, image: b}]\n";
    let (code, _, err) = run(&["inject", "-f", "-"], Some(bad));
    assert_eq!(code, 2);
    assert!(
        err.contains("document 1 (Pod p)")
            && err.contains("trellis.dev/max-requests")
            && err.contains("\"lots\""),
        "{err}"
    );
}
