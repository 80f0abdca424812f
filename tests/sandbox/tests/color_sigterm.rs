//! The colour app on SIGTERM (issue 16, item 10): it stops accepting, finishes the request in
//! flight and exits 0 at once, instead of making the kubelet wait out the grace period.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(port: u16, within: Duration) -> TcpStream {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("color never listened on {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn color_finishes_the_request_in_flight_and_exits_0_on_sigterm() {
    let (port, health) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_color"))
        .args([
            "--color=green",
            &format!("--listen=127.0.0.1:{port}"),
            &format!("--health-listen=127.0.0.1:{health}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = connect(port, Duration::from_secs(10));
    conn.write_all(b"GET /?delay_ms=800 HTTP/1.1\r\nhost: green\r\nconnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("green\n"), "{answer}");

    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "color still running 3 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "color exited with {status}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("SIGTERM: requests in flight finished"),
        "{stderr}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "color still accepts after exiting"
    );
}

/// The demo's idle client containers (`client`, `grpc-client`): the exact argv of their manifests,
/// run as a process leader, exits 0 within a second of SIGTERM.
#[test]
fn the_demo_clients_exit_0_on_sigterm() {
    for app in ["client", "grpc-client"] {
        let deployment = sandbox::manifests::deployment(app).unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let argv = sandbox::kubelet::argv(container).unwrap();
        assert_ne!(
            argv,
            ["sleep", "infinity"],
            "{app}: sleep as PID 1 ignores SIGTERM"
        );
        let mut child = Command::new(&argv[0]).args(&argv[1..]).spawn().unwrap();
        // Let the shell install its trap and start waiting.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{app}: {argv:?} exited by itself"
        );
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(1),
                "{app}: {argv:?} still running 1 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{app}: {argv:?} exited with {status}");
    }
}
