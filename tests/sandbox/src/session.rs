//! What a long-running sandbox program (`make demo`, `make soak`) does around its mesh: refuse to
//! run twice at once, remove an earlier run's leftovers, and clean up on Ctrl-C or SIGTERM.

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};

use crate::cleanup;

/// Root checked, the run's lock taken (`prefix.lock` in the temp dir), an interrupt handler
/// installed that removes everything made, and stale namespaces of an earlier run removed.
/// `name` is how errors name the program (`make demo`). Hold the lock until the end.
pub fn begin(name: &'static str, prefix: &'static str) -> Result<Flock<File>, String> {
    kit::root::check().map_err(|e| format!("{name}: {e}"))?;
    let lock = File::create(std::env::temp_dir().join(format!("{prefix}.lock")))
        .map_err(|e| e.to_string())
        .and_then(|f| {
            Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e.to_string())
        })
        .map_err(|e| {
            format!("{name}: another run is going on this machine ({e}); wait for it to end")
        })?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        // Hold the terminal so the main thread, failing as things vanish, prints nothing more.
        let _out = std::io::stdout().lock();
        let _err = std::io::stderr().lock();
        eprintln!("\n{name}: interrupted: removing the namespaces and processes it made");
        cleanup::all();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(prefix));
        eprintln!("{name}: done");
        std::process::exit(130);
    });
    let stale = kit::netns::remove_stale(prefix);
    if stale > 0 {
        println!("(removed {stale} namespaces left by an earlier run)");
    }
    Ok(lock)
}
