//! Golden tests of `control convert`: each `testdata/convert/<case>/` holds `input.yaml` (Istio
//! objects, and the Services they refer to), `output.yaml` (what the command prints on stdout)
//! and `warnings.txt` (what it prints on stderr). Cases named `bad_*` are refused: exit 2, an
//! empty output.yaml, and the error in warnings.txt. `UPDATE_GOLDEN=1` rewrites the expected
//! files. Every emitted TrafficPolicy must pass the control plane's own policy parser, and every
//! HTTPRoute must read back as the Gateway API crate's `HTTPRoute` unchanged. Then the whole
//! output, with the Services the tutorials' cluster has, is loaded as `control serve --from-dir`
//! loads a directory: no problem beyond what convert warned of, and `control describe` shows each
//! route's rules at its parent Service. The gateway example in `manifests/gateway/` is checked
//! the same way.

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

/// Writes `docs` (YAML documents) to a fresh directory under the target dir.
fn scratch_dir(case: &str, docs: &[String]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("convert-{case}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("objects.yaml"), docs.join("---\n")).unwrap();
    dir
}

#[test]
fn converted_objects_are_accepted_by_the_control_plane_and_shown_by_describe() {
    let mut described = 0;
    for (i, case) in cases()
        .iter()
        .filter(|c| !name(c).starts_with("bad_"))
        .enumerate()
    {
        let case_name = name(case);
        let converted = control::convert::convert(&input(case)).unwrap();
        // The Services the Istio objects name, as the cluster has them (with a ClusterIP), then
        // everything convert made.
        let mut docs = Vec::new();
        let mut services = Vec::new();
        for (j, doc) in input(case).split("\n---").enumerate() {
            let mut v: serde_json::Value = match serde_yaml::from_str(doc) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["kind"] != "Service" {
                continue;
            }
            if v["spec"]["clusterIP"].is_null() {
                v["spec"]["clusterIP"] = format!("10.96.{}.{}", i + 1, j + 1).into();
            }
            services.push(v.clone());
            docs.push(serde_yaml::to_string(&v).unwrap());
        }
        // Services the cluster has (the Istio tutorials' bookinfo) that neither the input nor
        // convert defines: the routes' parents and the backends without a subset.
        let ns = |o: &serde_json::Value| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        };
        let same = |o: &serde_json::Value, name: &serde_json::Value, namespace: &str| {
            o["metadata"]["name"] == *name && ns(o) == namespace
        };
        let defined =
            |name: &serde_json::Value, namespace: &str, services: &[serde_json::Value]| {
                services.iter().any(|s| same(s, name, namespace))
                    || converted
                        .objects
                        .iter()
                        .any(|o| o["kind"] == "Service" && same(o, name, namespace))
            };
        for route in converted
            .objects
            .iter()
            .filter(|o| o["kind"] == "HTTPRoute")
        {
            let mut wanted = Vec::new();
            let mut first_port = None;
            for rule in route["spec"]["rules"].as_array().unwrap() {
                let mirrors = rule["filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| &f["requestMirror"]["backendRef"])
                    .filter(|b| !b.is_null());
                for b in rule["backendRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(mirrors)
                {
                    first_port = first_port.or(b["port"].as_u64());
                    wanted.push((b["name"].clone(), b["port"].as_u64()));
                }
            }
            let parent = &route["spec"]["parentRefs"][0];
            wanted.push((
                parent["name"].clone(),
                parent["port"].as_u64().or(first_port),
            ));
            let namespace = ns(route);
            for (name, port) in wanted {
                if defined(&name, &namespace, &services) {
                    continue;
                }
                let n = services.len() + 100;
                let v = serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"clusterIP": format!("10.96.{}.{n}", i + 1),
                             "ports": [{"name": "http", "port": port.unwrap_or(80)}]},
                });
                docs.push(serde_yaml::to_string(&v).unwrap());
                services.push(v);
            }
        }
        docs.push(converted.to_yaml());
        let dir = scratch_dir(&case_name, &docs);
        let loaded = control::source::dir::load(&dir).unwrap();
        assert!(
            loaded.problems.is_empty(),
            "{case_name}: {:?}",
            loaded.problems
        );
        let mut model = control::Model::new();
        model.sync(loaded.objects);
        // No problem, but what convert itself warned of: a backend in another namespace needs
        // a ReferenceGrant, which the control plane reports too (and answers 500 for).
        let warned: Vec<String> = converted.warnings.iter().map(|w| w.to_string()).collect();
        let cross_namespace = warned.iter().any(|w| w.contains("needs a ReferenceGrant"));
        let reports: Vec<String> = model
            .reports()
            .iter()
            .map(|r| r.to_string())
            .filter(|r| !(cross_namespace && r.contains("RefNotPermitted")))
            .collect();
        assert!(reports.is_empty(), "{case_name}: {reports:#?}");

        // Each route shows in describe's answer for its parent Service, every rule of it, with
        // no problem.
        for route in converted
            .objects
            .iter()
            .filter(|o| o["kind"] == "HTTPRoute")
        {
            let parent = &route["spec"]["parentRefs"][0];
            let svc = services
                .iter()
                .find(|s| same(s, &parent["name"], &ns(route)))
                .unwrap_or_else(|| panic!("{case_name}: no Service {}", parent["name"]));
            let port = parent["port"]
                .as_u64()
                .or_else(|| svc["spec"]["ports"][0]["port"].as_u64())
                .unwrap();
            let addr = format!("{}:{port}", svc["spec"]["clusterIP"].as_str().unwrap());
            let (update, problems) =
                control::describe::from_dir(&dir, addr.parse().unwrap()).unwrap();
            assert!(
                problems
                    .iter()
                    .all(|p| cross_namespace && p.contains("RefNotPermitted")),
                "{case_name}: {problems:#?}"
            );
            let routes = update
                .destination
                .and_then(|d| d.routes)
                .unwrap_or_else(|| panic!("{case_name}: no routes for {addr}"));
            let rules = route["spec"]["rules"].as_array().unwrap().len();
            for r in 0..rules {
                let source = format!(
                    "{}/{}#{r}",
                    ns(route),
                    route["metadata"]["name"].as_str().unwrap()
                );
                assert!(
                    routes.rules.iter().any(|x| x.source == source),
                    "{case_name}: {source} not in {:?}",
                    routes.rules.iter().map(|x| &x.source).collect::<Vec<_>>()
                );
            }
            described += 1;
            // Every backend of every rule is a Service that exists: nothing answered 500.
            assert!(
                cross_namespace || routes.rules.iter().all(|x| x.invalid_weight == 0),
                "{case_name}"
            );
        }
    }
    assert!(described >= 9, "only {described} routes described");
}

/// The gateway example (`manifests/gateway/`) with the demo's Services: accepted, and the
/// Gateway's routes send `/paths/red` to red.
#[test]
fn the_gateway_example_is_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut docs = Vec::new();
    for file in ["gateway/routes.gateway-api.yaml", "demo/red.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for doc in text.split("\n---") {
            let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
            // The control plane reads Services and Gateway API objects; a Deployment is not its.
            if v["kind"] != "Deployment" && !v.is_null() {
                docs.push(serde_yaml::to_string(&v).unwrap());
            }
        }
    }
    let dir = scratch_dir("gateway-example", &docs);
    let loaded = control::source::dir::load(&dir).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let gateway = config::api::ServiceRef {
        namespace: "demo".into(),
        name: "ingress-gw".into(),
    };
    let (update, problems) = control::describe::gateway_from_dir(&dir, &gateway).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let routes = update.routes.expect("the Gateway's routes");
    assert_eq!(routes.rules.len(), 1);
    assert_eq!(routes.backends[0].service.name, "red");
    assert_eq!(routes.rules[0].backends.len(), 1);
    assert!(
        matches!(&routes.matches[0].path, Some(config::api::PathMatch::Prefix(p)) if p == "/paths/red"),
        "{:?}",
        routes.matches
    );
}
