//! Pool limits (Envoy's circuit-breaker thresholds): one [`Limits`] type for every pool, inbound,
//! outbound and gateway alike, and one table of its fields from which the flags
//! (`--max-connections`, `--outbound-max-connections`, ...), their `TRELLIS_*` variables and the
//! `trellis.dev/*` annotations are all derived. Adding a limit is a field plus a row.

use clap::{Arg, ArgMatches, Command};

/// The circuit-breaker thresholds of one cluster; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
}

/// One limit: its name (the flag and annotation suffix), what it bounds, and where it is stored.
pub struct LimitField {
    pub name: &'static str,
    pub help: &'static str,
    pub slot: fn(&mut Limits) -> &mut Option<u32>,
}

impl LimitField {
    pub fn get(&self, limits: &Limits) -> Option<u32> {
        let mut l = *limits;
        *(self.slot)(&mut l)
    }
}

impl Limits {
    /// Every limit, once.
    pub const FIELDS: [LimitField; 4] = [
        LimitField {
            name: "max-connections",
            help: "most connections",
            slot: |l| &mut l.max_connections,
        },
        LimitField {
            name: "max-pending-requests",
            help: "most requests waiting for a connection",
            slot: |l| &mut l.max_pending_requests,
        },
        LimitField {
            name: "max-requests",
            help: "most requests in flight",
            slot: |l| &mut l.max_requests,
        },
        LimitField {
            name: "max-requests-per-connection",
            help: "close an upstream connection after this many requests",
            slot: |l| &mut l.max_requests_per_connection,
        },
    ];
}

/// Which pools a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The pools to the local app (one per captured port), or the gateway's upstream.
    Inbound,
    /// The pools to each outbound destination.
    Outbound,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Inbound, Side::Outbound];

    /// The flag (and annotation) name of `field` on this side: `max-connections`,
    /// `outbound-max-connections`.
    pub fn name(self, field: &LimitField) -> String {
        match self {
            Side::Inbound => field.name.to_string(),
            Side::Outbound => format!("outbound-{}", field.name),
        }
    }

    fn help(self, field: &LimitField) -> String {
        let side = match self {
            Side::Inbound => "Inbound (or gateway upstream) pool",
            Side::Outbound => "Outbound pools (one per destination)",
        };
        format!("{side}: {}.", field.help)
    }
}

/// The inbound and outbound limits, as the proxy's flags carry them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolLimits {
    pub inbound: Limits,
    pub outbound: Limits,
}

impl PoolLimits {
    pub fn side(&self, side: Side) -> &Limits {
        match side {
            Side::Inbound => &self.inbound,
            Side::Outbound => &self.outbound,
        }
    }

    pub fn side_mut(&mut self, side: Side) -> &mut Limits {
        match side {
            Side::Inbound => &mut self.inbound,
            Side::Outbound => &mut self.outbound,
        }
    }

    /// Every limit with its flag name and value, in flag order.
    pub fn entries(&self) -> impl Iterator<Item = (String, Option<u32>)> + '_ {
        Side::ALL.into_iter().flat_map(move |side| {
            Limits::FIELDS
                .iter()
                .map(move |f| (side.name(f), f.get(self.side(side))))
        })
    }
}

// Written by hand rather than derived: derive cannot give one field type two flag prefixes.
impl clap::FromArgMatches for PoolLimits {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut limits = PoolLimits::default();
        limits.update_from_arg_matches(m)?;
        Ok(limits)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for side in Side::ALL {
            for f in &Limits::FIELDS {
                if let Some(v) = m.get_one::<u32>(&side.name(f)) {
                    *(f.slot)(self.side_mut(side)) = Some(*v);
                }
            }
        }
        Ok(())
    }
}

impl clap::Args for PoolLimits {
    fn augment_args(mut cmd: Command) -> Command {
        for side in Side::ALL {
            for f in &Limits::FIELDS {
                let name = side.name(f);
                let env = format!("TRELLIS_{}", name.to_ascii_uppercase().replace('-', "_"));
                cmd = cmd.arg(
                    Arg::new(name.clone())
                        .long(name)
                        .env(env)
                        .value_name("N")
                        .value_parser(clap::value_parser!(u32))
                        .help(side.help(f)),
                );
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_its_own_slot() {
        let mut l = Limits::default();
        for (i, f) in Limits::FIELDS.iter().enumerate() {
            *(f.slot)(&mut l) = Some(i as u32 + 1);
        }
        assert_eq!(
            l,
            Limits {
                max_connections: Some(1),
                max_pending_requests: Some(2),
                max_requests: Some(3),
                max_requests_per_connection: Some(4),
            }
        );
        let names: Vec<String> = PoolLimits::default().entries().map(|(n, _)| n).collect();
        assert_eq!(names[0], "max-connections");
        assert_eq!(names[7], "outbound-max-requests-per-connection");
    }
}
