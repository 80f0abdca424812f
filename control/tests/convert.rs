//! Golden tests of `control convert`: each `testdata/convert/<case>/` holds `input.yaml` (Istio
//! objects, and the Services they refer to), `output.yaml` (what the command prints on stdout)
//! and `warnings.txt` (what it prints on stderr). Cases named `bad_*` are refused: exit 2, an
//! empty output.yaml, and the error in warnings.txt. `UPDATE_GOLDEN=1` rewrites the expected
//! files. Every emitted TrafficPolicy must pass the control plane's own policy parser, and every
//! HTTPRoute must read back as the Gateway API crate's `HTTPRoute` unchanged.

use std::path::{Path, PathBuf};

use gateway_api::experimental::httproutes::HttpRoute;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/convert");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 11,
        "cases went missing from {}",
        root.display()
    );
    cases
}

fn name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

fn input(case: &Path) -> String {
    std::fs::read_to_string(case.join("input.yaml")).expect("input.yaml")
}

#[test]
fn golden_convert_cases() {
    let mut failures = Vec::new();
    for case in cases() {
        let out = control::convert::run(&input(&case));
        let want_code = if name(&case).starts_with("bad_") {
            2
        } else {
            0
        };
        if out.code != want_code {
            failures.push(format!(
                "{}: exit {} (expected {want_code}): {}",
                name(&case),
                out.code,
                out.stderr
            ));
        }
        for (file, got) in [("output.yaml", &out.stdout), ("warnings.txt", &out.stderr)] {
            if let Err(m) = kit::golden::compare(&case.join(file), got) {
                failures.push(m.to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_object_is_one_trellis_reads() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for case in cases().iter().filter(|c| !name(c).starts_with("bad_")) {
        let converted = control::convert::convert(&input(case)).unwrap();
        // What is printed reads back as the objects.
        let yaml = converted.to_yaml();
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(docs, converted.objects, "{}", name(case));
        for object in &converted.objects {
            let kind = object["kind"].as_str().unwrap().to_string();
            let what = format!("{}: {kind} {}", name(case), object["metadata"]["name"]);
            match kind.as_str() {
                "TrafficPolicy" => {
                    let parsed = control::policy::parse(object);
                    assert!(parsed.result.is_ok(), "{what}: {:?}", parsed.result);
                }
                "HTTPRoute" => {
                    let route: HttpRoute = serde_json::from_value(object.clone())
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(&serde_json::to_value(&route).unwrap(), object, "{what}");
                    assert_eq!(object["apiVersion"], "gateway.networking.k8s.io/v1");
                    let parent = &object["spec"]["parentRefs"][0];
                    assert_eq!(
                        (&parent["group"], &parent["kind"]),
                        (&"".into(), &"Service".into()),
                        "{what}"
                    );
                }
                "Service" => {
                    let _: k8s_openapi::api::core::v1::Service =
                        serde_json::from_value(object.clone()).unwrap();
                }
                "HTTPFault" => {
                    assert_eq!(object["apiVersion"], "trellis.dev/v1alpha1");
                    for part in ["abort", "delay"] {
                        if let Some(p) = object["spec"][part]["percentage"].as_f64() {
                            assert!((0.0..=100.0).contains(&p), "{what}");
                        }
                    }
                }
                other => panic!("{what}: convert made a {other}"),
            }
            *kinds.entry(kind).or_default() += 1;
        }
    }
    // The cases exercise every kind convert makes.
    assert_eq!(
        kinds.keys().map(String::as_str).collect::<Vec<_>>(),
        ["HTTPFault", "HTTPRoute", "Service", "TrafficPolicy"]
    );
}
