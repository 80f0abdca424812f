//! The kit's one error type: every failure names the command, namespace or address involved.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

#[derive(thiserror::Error)]
pub enum Error {
    /// The process is not root (see [`crate::root`]).
    #[error("{0}")]
    NotRoot(&'static str),

    #[error("could not run `{command}` (is it installed?): {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("`{command}` did not finish within {timeout:?}: {output}")]
    Timeout {
        command: String,
        timeout: Duration,
        output: String,
    },

    /// Creating a namespace after [`crate::netns::remove_all`] began (an interrupted demo).
    #[error("stopping: not creating network namespace {0}")]
    Stopping(String),

    #[error("network namespace {name}: {what}: {source}")]
    Netns {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("HTTP to {addr}: {what}: {source}")]
    Http {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: hyper::Error,
    },

    /// A request that cannot be sent: a bad method or path.
    #[error("cannot send {what}: {reason}")]
    Request { what: String, reason: String },

    #[error("TLS to {addr}: {what}")]
    Tls { addr: SocketAddr, what: String },

    #[error("HTTP to {addr}: no answer within {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },

    #[error("{method} {path} on {addr} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// `unwrap()` and `expect()` in tests print the message, not the struct.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)?;
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            // Display above already includes the direct source.
            source = s.source();
            if let Some(s) = source {
                write!(f, ": {s}")?;
            }
        }
        Ok(())
    }
}
