//! The `control` binary's promises: describe prints exactly the Update, bad input exits 2 naming
//! what was wrong, and serve without a usable Kubernetes config exits 2 saying how to give one.

use std::path::Path;
use std::process::Command;

use config::api::Update;

fn control(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(args)
        .output()
        .expect("control runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn testdata(case: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(case)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn describe_prints_the_update_and_the_policy_errors() {
    let (code, out, err) = control(&[
        "describe",
        "10.96.0.10:80",
        "--from-dir",
        &testdata("compile/bad_policy"),
    ]);
    assert_eq!(code, 0, "{err}");
    let update: Update = serde_json::from_str(&out).unwrap();
    let d = update.destination.expect("a known Service");
    assert_eq!(d.service.name, "reviews");
    assert_eq!(d.policy, config::api::Policy::default());
    assert!(
        err.contains(r#"default/reviews: spec.loadBalancer.simple: "FASTEST" is not one of"#),
        "{err}"
    );

    let (code, out, _) = control(&[
        "describe",
        "[fd00::9]:80",
        "--from-dir",
        &testdata("examples"),
    ]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Update>(&out)
        .unwrap()
        .destination
        .is_none());
}

#[test]
fn bad_input_exits_2_naming_it() {
    let dir = testdata("examples");
    let (code, _, err) = control(&["describe", "reviews", "--from-dir", &dir]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`reviews` is not a destination address"),
        "{err}"
    );
    let (code, _, err) = control(&["describe", "10.96.0.10:80", "--from-dir", "/nonexistent"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--from-dir /nonexistent: cannot read"),
        "{err}"
    );
    let (code, _, err) = control(&["describe", "10.96.0.10:80"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn serve_without_a_kubernetes_config_or_with_a_bad_one_exits_2_naming_it() {
    let serve = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_control"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("KUBECONFIG", "/nonexistent/trellis-kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("TRELLIS_KUBECONFIG")
            .env_remove("TRELLIS_FROM_DIR")
            .output()
            .expect("control runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = serve(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no Kubernetes configuration"), "{err}");
    assert!(err.contains("--kubeconfig PATH"), "{err}");

    let (code, err) = serve(&["--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );

    let (code, err) = serve(&["--kubeconfig", "/k", "--from-dir", "/d"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn convert_reads_a_file_or_stdin_and_exits_2_on_bad_input() {
    let case = testdata("convert/weights_90_10");
    let want = std::fs::read_to_string(format!("{case}/output.yaml")).unwrap();
    let (code, out, err) = control(&["convert", "-f", &format!("{case}/input.yaml")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, want);
    assert!(
        err.starts_with("warning: DestinationRule default/reviews: "),
        "{err}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(["convert", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(format!("{case}/input.yaml")).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let piped = child.wait_with_output().unwrap();
    assert_eq!(piped.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&piped.stdout), want);

    let (code, out, err) = control(&["convert", "-f", &testdata("convert/bad_subset/input.yaml")]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with("control convert: document 2 (VirtualService default/reviews): "),
        "{err}"
    );

    let (code, _, err) = control(&["convert", "-f", "/nonexistent/istio.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/istio.yaml"), "{err}");
}
