//! Where the model's objects come from. One seam, [`Source`], so the server does not care whether
//! objects are read from a directory (`--from-dir`, for local runs, VMs and tests) or from
//! Kubernetes watchers (kube-runtime watchers against the API server or its test double).
//!
//! A source feeds the [`Store`] in one of two ways: snapshots ([`Store::sync`], which diffs them
//! against the model: the directory re-reads everything; [`Store::sync_kind`], one kind at a
//! time: a watcher's relist) or single events ([`Store::apply`], what watch events map to).
//! Either way the store works out the touched Services and pushes only their subscribers.

pub mod dir;
pub mod kube;

use std::sync::Arc;

use crate::store::Store;

/// A source of cluster objects.
#[derive(Debug)]
pub enum Source {
    Dir(dir::DirSource),
    Kube(kube::KubeSource),
}

/// A source that stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Dir(#[from] dir::DirError),
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
}

impl Source {
    /// Loads once (marking the store ready), then follows changes until the task is dropped.
    pub async fn run(self, store: Arc<Store>) -> Result<(), SourceError> {
        match self {
            Source::Dir(d) => d.run(store).await?,
            Source::Kube(k) => k.run(store).await?,
        }
        Ok(())
    }
}
