#!/usr/bin/env python3
"""Writes the SPDX 2.3 software bill of materials of a Rust binary image: the crates linked into
the binary and the Debian packages that own the files copied beside it.

    sbom.py --name REF --package CRATE [--dev] --repo DIR [--file PATH ...] > sbom.spdx.json

Crates come from `cargo tree` (normal edges only, no proc-macros: what is compiled into the
binary, with the build's own feature resolution), their versions and checksums from Cargo.lock,
their licenses from `cargo metadata`. `--dev` adds the package's dev-dependencies, which its
examples link. Each --file is mapped to its Debian package with dpkg. The output only depends
on its inputs and SOURCE_DATE_EPOCH, so a rebuild of the same commit gives the same bytes.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib

TOOL = "batchguard-images-sbom"


def run(*args, cwd=None):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def spdx_id(kind, name, version):
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{kind}-{name}-{version}")


def linked_crates(repo, package, dev):
    """(name, version, is_workspace_member) of every crate compiled into PACKAGE's binary."""
    host = re.search(r"^host: (.+)$", run("rustc", "-vV"), re.M).group(1)
    # Dev edges exist for workspace members only, so --dev adds the root's dev-dependencies (all
    # of them: more than one example may link, never less).
    edges = "normal,dev,no-proc-macro" if dev else "normal,no-proc-macro"
    out = run("cargo", "tree", "--locked", "--quiet", "-p", package, "--target", host,
              "-e", edges, "--prefix", "none", "--format", "{p}", cwd=repo)
    crates = set()
    for line in out.splitlines():
        match = re.match(r"^(\S+) v(\S+)( \((?!\*\)).*?\))?", line)
        if match:
            crates.add((match.group(1), match.group(2), match.group(3) is not None))
    return sorted(crates)


def cargo_lock(repo):
    with open(os.path.join(repo, "Cargo.lock"), "rb") as f:
        return {(p["name"], p["version"]): p for p in tomllib.load(f)["package"]}


def licenses(repo):
    meta = json.loads(run("cargo", "metadata", "--locked", "--format-version", "1", cwd=repo))
    return {(p["name"], p["version"]): p.get("license") for p in meta["packages"]}


def crate_package(name, version, member, lock, license):
    entry = lock.get((name, version), {})
    package = {
        "name": name,
        "SPDXID": spdx_id("Crate", name, version),
        "versionInfo": version,
        "supplier": "NOASSERTION",
        "downloadLocation": (f"https://crates.io/api/v1/crates/{name}/{version}/download"
                             if entry.get("source", "").startswith("registry+") else "NOASSERTION"),
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": spdx_license(license),
        "copyrightText": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:cargo/{name}@{version}"}],
    }
    if "checksum" in entry:
        package["checksums"] = [{"algorithm": "SHA256", "checksumValue": entry["checksum"]}]
    if member:
        package["primaryPackagePurpose"] = "APPLICATION"
    return package


def spdx_license(expression):
    """Cargo's old `A/B` form is `A OR B` in SPDX; anything else passes as it is."""
    if not expression:
        return "NOASSERTION"
    return " OR ".join(part.strip() for part in expression.split("/"))


def debian_packages(files):
    """(package, version, arch) owning each file, as dpkg knows them (merged /usr aware)."""
    owners = set()
    for path in files:
        candidates = [path, os.path.realpath(path)]
        candidates += [c[len("/usr"):] for c in candidates if c.startswith("/usr/")]
        candidates += ["/usr" + c for c in candidates if not c.startswith("/usr/")]
        for candidate in candidates:
            found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                owners.add(found.stdout.split(":")[0].strip())
                break
        else:
            sys.exit(f"sbom: no Debian package owns {path}")
    result = []
    for name in sorted(owners):
        version, arch = run("dpkg-query", "-W", "-f", "${Version} ${Architecture}", name).split()
        result.append((name, version, arch))
    return result


def deb_package(name, version, arch):
    return {
        "name": name,
        "SPDXID": spdx_id("Deb", name, version),
        "versionInfo": version,
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": f"pkg:deb/debian/{name}@{version}?arch={arch}&distro=debian-12"}],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the image reference the SBOM describes")
    parser.add_argument("--package", required=True, help="the Cargo package whose binary the image holds")
    parser.add_argument("--dev", action="store_true", help="the binary is an example: add dev-dependencies")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--file", action="append", default=[], help="a host file copied into the image")
    parser.add_argument("--deb", action="append", default=[],
                        help="NAME=VERSION of a Debian package taken from its .deb (not installed here)")
    args = parser.parse_args()

    lock, license_of = cargo_lock(args.repo), licenses(args.repo)
    crates = linked_crates(args.repo, args.package, args.dev)
    packages = [crate_package(n, v, m, lock, license_of.get((n, v))) for n, v, m in crates]
    debs = debian_packages(args.file)
    for pinned in args.deb:
        name, version = pinned.split("=", 1)
        debs.append((name, version, "all"))
    packages += [deb_package(*d) for d in debs]
    root = next((p for p in packages if p["name"] == args.package), None)
    if root is None:
        sys.exit(f"sbom: cargo tree did not list {args.package}")

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    revision = os.environ.get("REVISION", "unknown")
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": args.name,
        "documentNamespace": f"https://github.com/batchguard/batchguard/spdx/{args.name.replace(':', '/')}/{revision}",
        "creationInfo": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
                         "creators": [f"Tool: {TOOL}"]},
        "packages": packages,
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": root["SPDXID"]}]
        + [{"spdxElementId": root["SPDXID"], "relationshipType": "CONTAINS" if p in packages[:len(crates)] else "DEPENDS_ON",
            "relatedSpdxElement": p["SPDXID"]} for p in packages if p is not root],
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
