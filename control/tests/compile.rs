//! Golden tests of `compile`: each `testdata/compile/<case>/` holds cluster objects as YAML,
//! `ask.txt` (the addresses a proxy asks about, one a line, or `gateway NAMESPACE/NAME` for what
//! a gateway proxy asks about a Gateway) and `expected.json`: the answer for
//! each address, in order, plus every problem a user would be told about (bad documents with
//! their file, refused policies, conflicts). `UPDATE_GOLDEN=1` rewrites the expected files.

use std::net::SocketAddr;
use std::path::Path;

use control::model::Model;
use control::source::dir;
use serde_json::json;

/// The case's YAML files, read as `--from-dir` reads them (expected.json is not an input).
fn load(case: &Path) -> dir::Loaded {
    let mut files: Vec<_> = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut loaded = dir::Loaded::default();
    for f in files {
        dir::parse_file(&f, &std::fs::read_to_string(&f).unwrap(), &mut loaded);
    }
    loaded
}

fn run_case(case: &Path) -> String {
    let loaded = load(case);
    let mut model = Model::new();
    model.sync(loaded.objects);
    let ask = std::fs::read_to_string(case.join("ask.txt")).expect("ask.txt");
    let answers: Vec<serde_json::Value> = ask
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            if let Some(gateway) = line.trim().strip_prefix("gateway ") {
                let (namespace, name) = gateway.split_once('/').expect("gateway NS/NAME");
                let gateway = config::api::ServiceRef {
                    namespace: namespace.into(),
                    name: name.into(),
                };
                return json!({
                    "gateway": gateway,
                    "routes": control::compile::compile_gateway(&model, &gateway),
                });
            }
            let address: SocketAddr = line.trim().parse().expect("an address in ask.txt");
            json!({
                "address": address,
                "destination": control::compile(&model, address),
            })
        })
        .collect();
    let mut problems: Vec<String> = loaded
        .problems
        .iter()
        .map(|p| {
            let file = p.file.file_name().unwrap_or_default().to_string_lossy();
            format!("{file}: document {}: {}", p.index, p.problem)
        })
        .collect();
    problems.extend(model.reports().iter().map(|r| r.to_string()));
    let mut text = serde_json::to_string_pretty(&json!({
        "answers": answers,
        "problems": problems,
    }))
    .unwrap();
    text.push('\n');
    text
}

#[test]
fn golden_compile_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/compile");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "cases went missing from {}",
        root.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let got = run_case(case);
        if let Err(m) = kit::golden::compare(&case.join("expected.json"), &got) {
            failures.push(m.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn compile_is_pure_and_order_independent() {
    // The same objects loaded in the opposite order give the same answers.
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/compile/two_slices");
    let loaded = load(&case);
    let mut forward = Model::new();
    forward.sync(loaded.objects.clone());
    let mut backward = Model::new();
    for o in loaded.objects.into_iter().rev() {
        backward.apply(control::Change::Apply(o));
    }
    let addr = "10.96.0.10:80".parse().unwrap();
    assert_eq!(
        control::compile(&forward, addr),
        control::compile(&backward, addr)
    );
}
