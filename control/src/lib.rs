//! `control`: Trellis's control plane. It keeps a model of the cluster's Services,
//! EndpointSlices and TrafficPolicies and answers each proxy's question "what is this address?"
//! with a stream of [`config::api::Update`]s: the whole answer first, then every change.
//!
//! - [`policy`]: the `TrafficPolicy` resource, validated into an [`config::api::Policy`];
//! - [`route`]: `HTTPRoute`, `GRPCRoute`, `HTTPFault` and `Gateway`, read and validated one by one;
//! - [`model`]: the objects, indexed by ClusterIP:port, with a version and touched-Service sets;
//! - [`compile`]: the pure function model + address -> [`config::api::Destination`];
//! - [`source`]: where objects come from (Kubernetes watchers, or a directory);
//! - [`store`]: the live model and one latest-answer topic per watched address;
//! - [`serve`]: the HTTP discovery and metrics servers; [`metrics`]: their Prometheus metrics;
//! - [`status`]: what each HTTPRoute's and GRPCRoute's `status.parents` should say;
//! - [`describe`]: what a proxy would be told, for humans;
//! - [`convert`]: Istio DestinationRules and VirtualServices as Trellis objects (`control convert`).
#![forbid(unsafe_code)]

pub mod compile;
pub mod convert;
pub mod describe;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod route;
pub mod serve;
pub mod source;
pub mod status;
pub mod store;

pub use compile::compile;
pub use model::{Change, Model, Object, Touched};
