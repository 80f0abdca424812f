//! One rule for turning a config back into a command line, shared by `proxy` and `proxyinit`: a
//! flag is written when its value differs from the default, or when the config pins it. The
//! proxy pins nothing, so its args show what was chosen for that pod and nothing else;
//! `proxyinit` pins the inputs of its iptables rules (uid, ports, CIDRs), so the rules a pod gets
//! can be read off its spec whatever defaults the image was built with.
//! And one source for the defaults: the clap attributes, read with the environment ignored, so a
//! `Default` impl cannot disagree with them.

use clap::{Args, Command, FromArgMatches};

/// A flag's value as its parser reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Not given (an unset optional flag, a switch that is off).
    Absent,
    /// A switch that is on: `--name`.
    On,
    /// `--name=VALUE`.
    Text(String),
}

/// One flag of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Value,
    /// Written even when it holds the default value.
    pub pinned: bool,
}

impl Flag {
    pub fn text(name: impl Into<String>, value: impl ToString) -> Flag {
        Flag {
            name: name.into(),
            value: Value::Text(value.to_string()),
            pinned: false,
        }
    }

    pub fn optional(name: impl Into<String>, value: Option<impl ToString>) -> Flag {
        Flag {
            name: name.into(),
            value: value.map_or(Value::Absent, |v| Value::Text(v.to_string())),
            pinned: false,
        }
    }

    pub fn switch(name: impl Into<String>, on: bool) -> Flag {
        Flag {
            name: name.into(),
            value: if on { Value::On } else { Value::Absent },
            pinned: false,
        }
    }

    /// This flag is written whenever it has a value, default or not.
    pub fn pinned(mut self) -> Flag {
        self.pinned = true;
        self
    }

    /// The argument that sets this flag, if it is set at all.
    pub fn arg(&self) -> Option<String> {
        match &self.value {
            Value::Absent => None,
            Value::On => Some(format!("--{}", self.name)),
            Value::Text(v) => Some(format!("--{}={v}", self.name)),
        }
    }
}

/// A config that can be written back as the flags that reproduce it.
pub trait Render: Default {
    /// Every flag of the config, in the order they are written.
    fn flags(&self) -> Vec<Flag>;

    /// The arguments that reproduce `self` when parsed: the pinned flags and those whose value
    /// differs from the default. A flag that is set by default cannot be unset this way; no
    /// config has one.
    fn to_args(&self) -> Vec<String> {
        let defaults = Self::default().flags();
        self.flags()
            .into_iter()
            .filter(|f| f.pinned || !defaults.contains(f))
            .filter_map(|f| f.arg())
            .collect()
    }
}

/// The value clap gives `T` when no flag is passed and no `TRELLIS_*` variable is read: the
/// defaults as the attributes state them. Panics only if `T` has a required flag (none does).
pub fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None::<&str>));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .expect("every flag has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse")
}
