//! Schema adjustments the derive cannot express.
//!
//! The embedded PodTemplateSpec schema carries every upstream field description (about 520 KB
//! of YAML). Client-side `kubectl apply` stores the whole CRD in an annotation limited to
//! 256 KiB, so the descriptions below `spec.template` are stripped; the structure (and so the
//! validation of a typo in the worker template) stays.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

pub(super) fn pod_template_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut value = PodTemplateSpec::json_schema(generator).to_value();
    strip_descriptions(&mut value);
    if let Value::Object(map) = &mut value {
        map.insert(
            "description".into(),
            "The worker pod template (a standard PodTemplateSpec).".into(),
        );
    }
    Schema::try_from(value).unwrap_or_default()
}

fn strip_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}
