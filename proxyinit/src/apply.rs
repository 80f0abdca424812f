//! The thin shell around iptables: read the nat table with `*-save`, feed the text computed by
//! [`crate::rules`] to `*-restore --noflush --wait` on stdin (one atomic transaction per family:
//! iptables applies all of it or none of it), and turn a refusal into an error that quotes
//! iptables' own message and the line it refused.

use std::io::{self, Write as _};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Instant;

use crate::detect::{self, Backend, Choice};
use crate::rules::{Family, NatState};
use crate::{IpTablesMode, Ipv6Mode};

/// Arguments of every restore: keep what is not ours, and wait for the xtables lock rather than
/// fail when kube-proxy or a CNI plugin holds it.
pub const RESTORE_ARGS: [&str; 2] = ["--noflush", "--wait"];

/// Where the kernel lists the network namespace's IPv6 addresses.
pub const IF_INET6: &str = "/proc/net/if_inet6";

/// Running iptables went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started at all.
    #[error(
        "could not run `{command}`: {source} (is iptables installed in the image and on PATH?)"
    )]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A restore was refused; nothing of its input was applied.
    #[error("{}", refused_message(.command, .status, .stderr, *.line, .input))]
    Refused {
        command: String,
        status: ExitStatus,
        stderr: String,
        /// The input line iptables named, if it named one.
        line: Option<usize>,
        input: String,
    },
    /// Another command (a save) failed.
    #[error("`{command}` failed ({status}): {}", .stderr.trim())]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `command args`, writing `stdin` to it, and returns its output whatever its exit status.
pub fn run(command: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, Error> {
    Running::start(command, args, stdin)?.finish()
}

/// A started command. Starting several before finishing any runs them in parallel: each
/// iptables call is mostly process start-up and a kernel round trip, so this is what keeps a
/// whole run well under the time budget of an init container.
struct Running {
    command: String,
    child: Child,
    started: Instant,
}

impl Running {
    fn start(command: &str, args: &[&str], stdin: Option<&str>) -> Result<Running, Error> {
        let started = Instant::now();
        let line = command_line(command, args);
        let mut child = Command::new(command)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: line.clone(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that exits early closes the pipe; its exit status and stderr tell why.
            let _ = pipe.write_all(text.as_bytes());
        }
        Ok(Running {
            command: line,
            child,
            started,
        })
    }

    fn finish(self) -> Result<Output, Error> {
        let Running {
            command,
            child,
            started,
        } = self;
        let out = child.wait_with_output().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        tracing::debug!(
            %command,
            status = %out.status,
            elapsed_us = started.elapsed().as_micros() as u64,
            "ran"
        );
        Ok(out)
    }
}

/// What `*-save` printed for each backend and family (all tables), read in parallel once and
/// used both to detect the backend and as the current state of the nat table.
pub struct Saves(Vec<(Backend, Family, Result<String, Error>)>);

impl Saves {
    /// Runs the save command of every backend × family.
    pub fn read(backends: &[Backend], families: &[Family]) -> Saves {
        let started: Vec<_> = backends
            .iter()
            .flat_map(|&b| families.iter().map(move |&f| (b, f)))
            .map(|(b, f)| (b, f, Running::start(&b.save_command(f), &[], None)))
            .collect();
        Saves(
            started
                .into_iter()
                .map(|(b, f, running)| {
                    let text = running.and_then(Running::finish).and_then(|out| {
                        if out.status.success() {
                            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                        } else {
                            Err(Error::Failed {
                                command: b.save_command(f),
                                status: out.status,
                                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                            })
                        }
                    });
                    (b, f, text)
                })
                .collect(),
        )
    }

    /// Rules held by `backend` over all families that could be read; `None` if none could.
    pub fn rule_count(&self, backend: Backend) -> Option<usize> {
        let counts: Vec<usize> = self
            .0
            .iter()
            .filter(|(b, _, _)| *b == backend)
            .filter_map(|(_, _, text)| text.as_ref().ok())
            .map(|text| detect::count_rules(text))
            .collect();
        (!counts.is_empty()).then(|| counts.iter().sum())
    }

    /// The nat table of `backend` / `family` (taken out: an error can be returned only once).
    pub fn take_nat(&mut self, backend: Backend, family: Family) -> Result<NatState, Error> {
        match self
            .0
            .iter()
            .position(|(b, f, _)| *b == backend && *f == family)
        {
            Some(i) => Ok(NatState::parse(&self.0.swap_remove(i).2?)),
            None => read_nat(backend, family),
        }
    }
}

/// The backend to use: auto picks the one whose saves hold rules (see [`detect::choose_backend`]).
pub fn choose_backend(mode: IpTablesMode, saves: &Saves) -> Choice<Backend> {
    detect::choose_backend(
        mode,
        saves.rule_count(Backend::Legacy),
        saves.rule_count(Backend::Nft),
    )
}

/// The backends whose rules must be read for `mode`: both in auto mode, else the one named.
pub fn candidate_backends(mode: IpTablesMode) -> &'static [Backend] {
    match mode {
        IpTablesMode::Auto => &[Backend::Legacy, Backend::Nft],
        IpTablesMode::Legacy => &[Backend::Legacy],
        IpTablesMode::Nft => &[Backend::Nft],
    }
}

/// The families to write rules for; auto looks at the namespace's IPv6 addresses.
pub fn detect_families(mode: Ipv6Mode) -> Choice<Vec<Family>> {
    let if_inet6 = match mode {
        Ipv6Mode::Auto => std::fs::read_to_string(IF_INET6).ok(),
        _ => None,
    };
    detect::choose_families(mode, if_inet6.as_deref())
}

/// The nat table as it is now, as far as Trellis's chains and jumps go.
pub fn read_nat(backend: Backend, family: Family) -> Result<NatState, Error> {
    let command = backend.save_command(family);
    let args = ["-t", "nat"];
    let out = run(&command, &args, None)?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: command_line(&command, &args),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(NatState::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Applies `input` in one `*-restore --noflush --wait` transaction.
pub fn restore(backend: Backend, family: Family, input: &str) -> Result<(), Error> {
    restore_with(&backend.restore_command(family), input)
}

/// Applies each family's input in its own transaction, all started in parallel.
pub fn restore_all(
    backend: Backend,
    inputs: &[(Family, String)],
) -> Vec<(Family, Result<(), Error>)> {
    let started: Vec<_> = inputs
        .iter()
        .map(|(family, input)| {
            let command = backend.restore_command(*family);
            let running = Running::start(&command, &RESTORE_ARGS, Some(input));
            (*family, command, input, running)
        })
        .collect();
    started
        .into_iter()
        .map(|(family, command, input, running)| {
            let result = running
                .and_then(Running::finish)
                .and_then(|out| check_restore(&command, input, out));
            (family, result)
        })
        .collect()
}

/// [`restore`] with an explicit command (tests use it to provoke refusals).
pub fn restore_with(command: &str, input: &str) -> Result<(), Error> {
    let out = run(command, &RESTORE_ARGS, Some(input))?;
    check_restore(command, input, out)
}

fn check_restore(command: &str, input: &str, out: Output) -> Result<(), Error> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Err(Error::Refused {
        command: command_line(command, &RESTORE_ARGS),
        status: out.status,
        line: refused_line(&stderr),
        stderr,
        input: input.to_string(),
    })
}

/// The input line iptables-restore blames: "Error occurred at line: 5" (1.8) or "line 5 failed".
pub fn refused_line(stderr: &str) -> Option<usize> {
    let mut rest = stderr;
    while let Some(i) = rest.find("line") {
        rest = &rest[i + 4..];
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
    }
    None
}

fn refused_message(
    command: &str,
    status: &ExitStatus,
    stderr: &str,
    line: Option<usize>,
    input: &str,
) -> String {
    let mut msg =
        format!("`{command}` refused the rules ({status}); nothing of them was applied.\n");
    msg.push_str("iptables said:\n");
    for l in stderr.lines().filter(|l| !l.trim().is_empty()) {
        msg.push_str(&format!("    {l}\n"));
    }
    let lines: Vec<&str> = input.lines().collect();
    match line.and_then(|n| Some((n, *lines.get(n.checked_sub(1)?)?))) {
        Some((n, "COMMIT")) => msg.push_str(&format!(
            "refused at line {n}: COMMIT (the kernel checks the whole transaction there: \
             the culprit is one of the rules above)\n"
        )),
        Some((n, text)) => msg.push_str(&format!("refused line {n}: {text}\n")),
        None => msg.push_str("iptables named no line\n"),
    }
    msg.push_str("the input it was given:\n");
    for (i, l) in lines.iter().enumerate() {
        let mark = if Some(i + 1) == line { ">" } else { " " };
        msg.push_str(&format!("  {mark}{:>3} | {l}\n", i + 1));
    }
    msg.trim_end().to_string()
}

fn command_line(command: &str, args: &[&str]) -> String {
    std::iter::once(command)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_refused_line_in_both_backends_messages() {
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): Chain 'NO_SUCH' does not exist\n\
                   Error occurred at line: 5\nTry `iptables-nft-restore -h' for more information.\n";
        let legacy = "iptables-restore v1.8.9 (legacy): Couldn't load target `NO_SUCH':No such file or directory\n\n\
                      Error occurred at line: 4\n";
        assert_eq!(refused_line(nft), Some(5));
        assert_eq!(refused_line(legacy), Some(4));
        assert_eq!(refused_line("iptables-restore: line 12 failed\n"), Some(12));
        assert_eq!(
            refused_line("Another app is currently holding the xtables lock"),
            None
        );
    }

    #[test]
    fn refusal_quotes_iptables_and_the_line() {
        let input = "*nat\n:TRELLIS_X - [0:0]\n-A TRELLIS_X -j NO_SUCH\nCOMMIT\n";
        let status = Command::new("false").status().unwrap();
        let msg = refused_message(
            "iptables-legacy-restore --noflush --wait",
            &status,
            "Couldn't load target `NO_SUCH'\nError occurred at line: 3\n",
            Some(3),
            input,
        );
        assert!(msg.contains("Couldn't load target `NO_SUCH'"), "{msg}");
        assert!(
            msg.contains("refused line 3: -A TRELLIS_X -j NO_SUCH"),
            "{msg}"
        );
        assert!(msg.contains(">  3 | -A TRELLIS_X -j NO_SUCH"), "{msg}");
        let msg = refused_message("x", &status, "line: 4", Some(4), input);
        assert!(msg.contains("refused at line 4: COMMIT"), "{msg}");
    }

    #[test]
    fn a_missing_command_says_so() {
        let err = run("trellis-no-such-iptables-restore", &RESTORE_ARGS, Some("")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("trellis-no-such-iptables-restore --noflush --wait")
                && msg.contains("is iptables installed"),
            "{msg}"
        );
    }
}
