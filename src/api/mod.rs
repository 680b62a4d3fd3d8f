//! The BatchRun and BatchQueue API (`batchguard.dev/v1alpha1`): spec, status and the CRD schema. No I/O here.

pub mod kube_facts;
pub mod labels;
mod quantity;
mod queue;
mod ranges;
mod reason;
mod schema;
mod spec;
mod status;
pub mod worker_pod;

pub use quantity::*;
pub use queue::*;
pub use ranges::*;
pub use reason::*;
pub use spec::*;
pub use status::*;

/// API group of every batchguard resource.
pub const GROUP: &str = "batchguard.dev";

/// The BatchRun CRD as YAML, as `crdgen` writes it to crds/.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&BatchRun::crd())
}

/// The BatchQueue CRD as YAML, as `crdgen batchqueue` writes it to crds/.
pub fn queue_crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&BatchQueue::crd())
}
