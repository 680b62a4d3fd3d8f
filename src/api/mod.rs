//! The BatchRun API (`batchguard.dev/v1alpha1`): spec, status and the CRD schema. No I/O here.

mod quantity;
mod schema;
mod spec;
mod status;

pub use quantity::*;
pub use spec::*;
pub use status::*;

/// API group of every batchguard resource.
pub const GROUP: &str = "batchguard.dev";

/// The BatchRun CRD as YAML, as `crdgen` writes it to crds/.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&BatchRun::crd())
}
