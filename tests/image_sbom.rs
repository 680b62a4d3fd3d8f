//! The images the real node runs carry their software bill of materials: the operator's and the
//! Rust worker's SPDX documents list exactly the crates their binaries link (at Cargo.lock's
//! versions and checksums, without build-only and test-only crates) and the Debian packages of
//! the libraries beside them; the copy in the image is the one in the build cache; and the
//! Dockerfile asks BuildKit for its own SBOM of the same build.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::RealNode;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn output(command: &mut Command) -> Vec<u8> {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// (name, version) → checksum (empty for workspace members) of every package in Cargo.lock.
fn cargo_lock() -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(Path::new(REPO).join("Cargo.lock")).unwrap();
    let field = |block: &str, key: &str| {
        block.lines().find_map(|l| {
            l.strip_prefix(&format!("{key} = \""))
                .map(|v| v.trim_end_matches('"').to_string())
        })
    };
    text.split("[[package]]")
        .skip(1)
        .map(|block| {
            let name = field(block, "name").unwrap();
            let version = field(block, "version").unwrap();
            (
                (name, version),
                field(block, "checksum").unwrap_or_default(),
            )
        })
        .collect()
}

/// The archive `tests/cluster/images/build` prints for REF's repository (cached: a warm build
/// only hashes).
fn archive_of(repository: &str) -> String {
    let printed = output(&mut Command::new(format!(
        "{REPO}/tests/cluster/images/build"
    )));
    String::from_utf8(printed)
        .unwrap()
        .lines()
        .find_map(|line| {
            let (reference, archive) = line.split_once(' ')?;
            reference
                .starts_with(&format!("{repository}:"))
                .then(|| archive.to_string())
        })
        .unwrap_or_else(|| panic!("images/build printed no {repository} image"))
}

/// A file from the image's layers (a docker-archive: manifest.json names the layer tars).
fn file_in_image(archive: &str, path: &str) -> Vec<u8> {
    let manifest: Value = serde_json::from_slice(&output(Command::new("tar").args([
        "-xOf",
        archive,
        "manifest.json",
    ])))
    .unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let layer = output(Command::new("tar").args(["-xOf", archive, layer.as_str().unwrap()]));
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sbom-layer.tar");
        std::fs::write(&scratch, layer).unwrap();
        let found = Command::new("tar")
            .args(["-xOf", scratch.to_str().unwrap(), path])
            .output()
            .unwrap();
        if found.status.success() {
            return found.stdout;
        }
    }
    panic!("{path} is in no layer of {archive}")
}

struct Sbom {
    document: Value,
    /// (purl type, name) → version
    packages: BTreeMap<(String, String), String>,
}

fn sbom_of(repository: &str, name: &str) -> Sbom {
    let archive = archive_of(repository);
    let cached = std::fs::read(Path::new(&archive).with_file_name("sbom.spdx.json"))
        .expect("the SBOM beside the cached archive");
    let inside = file_in_image(&archive, &format!("usr/share/doc/{name}/sbom.spdx.json"));
    assert_eq!(inside, cached, "the image holds the SBOM the cache holds");
    let document: Value = serde_json::from_slice(&cached).unwrap();
    assert_eq!(document["spdxVersion"], "SPDX-2.3");
    assert_eq!(document["dataLicense"], "CC0-1.0");
    assert!(document["name"].as_str().unwrap().starts_with(repository));
    let lock = cargo_lock();
    let mut packages = BTreeMap::new();
    for package in document["packages"].as_array().unwrap() {
        let purl = package["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap();
        let (kind, rest) = purl
            .strip_prefix("pkg:")
            .and_then(|p| p.split_once('/'))
            .unwrap_or_else(|| panic!("a purl: {purl}"));
        let (name, version) = (
            package["name"].as_str().unwrap().to_string(),
            package["versionInfo"].as_str().unwrap().to_string(),
        );
        if kind == "cargo" {
            assert_eq!(rest, format!("{name}@{version}"));
            let checksum = lock
                .get(&(name.clone(), version.clone()))
                .unwrap_or_else(|| panic!("{name} {version} is not in Cargo.lock"));
            let listed = package["checksums"][0]["checksumValue"]
                .as_str()
                .unwrap_or("");
            assert_eq!(listed, checksum, "{name} {version}: Cargo.lock's checksum");
        }
        packages.insert((kind.to_string(), name), version);
    }
    let described = &document["relationships"][0];
    assert_eq!(described["relationshipType"], "DESCRIBES");
    Sbom { document, packages }
}

fn locked_version(name: &str) -> String {
    let versions: Vec<_> = cargo_lock()
        .into_keys()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(versions.len(), 1, "{name}: one version in Cargo.lock");
    versions[0].clone()
}

fn debian_version(package: &str) -> String {
    let out = output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]));
    String::from_utf8(out).unwrap()
}

#[test]
fn operator_image_lists_the_crates_and_debian_packages_it_ships() {
    RealNode::from_env();
    let sbom = sbom_of("batchguard.local/batchguard", "batchguard");
    let cargo = |name: &str| sbom.packages.get(&("cargo".into(), name.into()));
    for linked in [
        "batchguard",
        "kube-client",
        "k8s-openapi",
        "tokio",
        "rustls",
        "ring",
        "prometheus-http-query",
    ] {
        assert_eq!(
            cargo(linked),
            Some(&locked_version(linked)),
            "{linked} is linked into the operator at Cargo.lock's version"
        );
    }
    // Proc-macros and build scripts' helpers run at build time, dev-dependencies in tests only.
    for absent in ["serde_derive", "thiserror-impl", "cc", "mlua", "plotters"] {
        assert_eq!(cargo(absent), None, "{absent} is not in the binary");
    }
    for deb in ["libc6", "libgcc-s1"] {
        assert_eq!(
            sbom.packages.get(&("deb".into(), deb.into())),
            Some(&debian_version(deb)),
            "{deb}: the version the image's libraries came from"
        );
    }
    assert!(
        sbom.packages
            .contains_key(&("deb".into(), "ca-certificates".into())),
        "the CA bundle's package"
    );
    let root = sbom.document["relationships"][0]["relatedSpdxElement"]
        .as_str()
        .unwrap();
    assert!(
        root.contains("batchguard"),
        "the SBOM describes the operator: {root}"
    );
}

#[test]
fn rust_worker_image_lists_the_sdk_and_nothing_of_the_operator() {
    RealNode::from_env();
    let sbom = sbom_of("batchguard.local/worker-rust", "worker-rust");
    let cargo = |name: &str| sbom.packages.get(&("cargo".into(), name.into()));
    assert_eq!(
        cargo("batchguard-worker"),
        Some(&locked_version("batchguard-worker"))
    );
    assert_eq!(cargo("serde_json"), Some(&locked_version("serde_json")));
    for absent in ["kube-client", "tokio", "batchguard"] {
        assert_eq!(cargo(absent), None, "the worker does not link {absent}");
    }
}

#[test]
fn dockerfile_asks_buildkit_for_an_sbom_of_the_build_stage() {
    let dockerfile = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).unwrap();
    assert!(dockerfile.starts_with("# syntax=docker/dockerfile:1"));
    assert!(
        dockerfile.contains("--sbom=true"),
        "the documented build command attests an SBOM"
    );
    assert!(
        dockerfile.contains("ARG BUILDKIT_SBOM_SCAN_STAGE=true"),
        "the build stage (Cargo.lock) is scanned, not only the runtime image"
    );
}
