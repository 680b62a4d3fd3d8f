#!/usr/bin/env python3
"""Packs container images without a Docker engine or a registry (Python stdlib only).

  mkimage.py layer OUT.tar --dir DIR [--owner PATH=UID:GID ...]
  mkimage.py layer OUT.tar --tar ROOTFS.tar
  mkimage.py image OUT.tar --tag REF --layer L1.tar [--layer L2.tar ...] [--entrypoint JSON]
             [--cmd JSON] [--env K=V ...] [--user UID:GID] [--workdir DIR] [--label K=V ...] [--arch ARCH]

`layer` writes a layer tar; `image` writes a docker-archive (manifest.json, config, layers), which
`ctr images import` and `docker load` read, and prints the image ID (the config's digest).

Identical inputs give identical bytes, so a rebuild gives the same image ID: entries are sorted
by name, user and group names are dropped (only numeric ids count), and every timestamp comes
from SOURCE_DATE_EPOCH. A directory layer is owned by root unless --owner says otherwise, so it
doesn't matter who ran the build. A rootfs tar (mmdebstrap's) keeps its owners and mtimes: the
packages' .pyc files are only valid next to sources with their original mtimes.
"""
import argparse
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import time

XATTR = "SCHILY.xattr."


def epoch():
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        sys.exit("mkimage.py: set SOURCE_DATE_EPOCH (e.g. the commit time) for a reproducible image")
    return int(value)


def clean(name):
    """Layer paths are relative, without './' (what docker save writes)."""
    name = os.path.normpath(name.lstrip("/"))
    return "" if name in (".", "") else name


def write_dir_layer(out, root, owners, mtime):
    """A directory as a layer. Hard links inside it are stored as separate files."""
    paths = []
    for top, dirs, files in os.walk(root):
        paths += [os.path.join(top, n) for n in dirs + files]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths, key=lambda p: clean(os.path.relpath(p, root))):
            name = clean(os.path.relpath(path, root))
            st = os.lstat(path)
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = mtime
            info.uid, info.gid = owners.get("/" + name, (0, 0))
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"mkimage.py: {path}: only files, directories and symlinks go into a directory layer")


def write_tar_layer(out, rootfs):
    """A rootfs tar re-packed in name order. Hard links must follow their target, so in each
    group of linked names the first one in that order carries the data."""
    with tarfile.open(rootfs) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        members = {}
        for m in src.getmembers():
            name = clean(m.name)
            if name:
                members[name] = m
        group = {}  # name -> the name holding the data
        linked = {}
        for name, m in members.items():
            if m.islnk():
                linked.setdefault(clean(m.linkname), []).append(name)
        for target, names in linked.items():
            first = min([target] + names)
            for n in [target] + names:
                group[n] = first
        for name in sorted(members):
            m = members[name]
            data_from = members[clean(m.linkname)] if m.islnk() else m
            info = tarfile.TarInfo(name)
            for attr in ("mode", "uid", "gid", "type", "linkname", "devmajor", "devminor", "size"):
                setattr(info, attr, getattr(data_from, attr))
            info.mtime = int(data_from.mtime)
            info.pax_headers = {k: v for k, v in data_from.pax_headers.items() if k.startswith(XATTR)}
            if name in group and group[name] != name:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, group[name], 0
                tar.addfile(info)
            elif info.isreg():
                info.linkname = ""
                tar.addfile(info, src.extractfile(data_from))
            else:
                tar.addfile(info)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pairs(items, what):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"mkimage.py: {what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def write_image(args):
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch()))
    diff_ids = ["sha256:" + sha256_file(layer) for layer in args.layer]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(pairs(args.env, "--env"))
    config = {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Entrypoint": json.loads(args.entrypoint) if args.entrypoint else None,
        "Cmd": json.loads(args.cmd) if args.cmd else None,
        "User": args.user,
        "WorkingDir": args.workdir,
        "Labels": pairs(args.label, "--label") or None,
    }
    image = {
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": {k: v for k, v in config.items() if v},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "mkimage.py"} for _ in args.layer],
    }
    config_bytes = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    layer_names = [d[len("sha256:"):] + "/layer.tar" for d in diff_ids]
    manifest = [{"Config": image_id + ".json", "RepoTags": [args.tag], "Layers": layer_names}]
    entries = {image_id + ".json": config_bytes, "manifest.json": json.dumps(manifest).encode()}
    entries.update(zip(layer_names, args.layer))

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, epoch()
            content = entries[name]
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.size = os.path.getsize(content)
                with open(content, "rb") as f:
                    tar.addfile(info, f)
    os.replace(tmp, args.out)
    print("sha256:" + image_id)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    layer = sub.add_parser("layer")
    layer.add_argument("out")
    source = layer.add_mutually_exclusive_group(required=True)
    source.add_argument("--dir")
    source.add_argument("--tar")
    layer.add_argument("--owner", action="append", default=[], metavar="PATH=UID:GID")
    image = sub.add_parser("image")
    image.add_argument("out")
    image.add_argument("--tag", required=True)
    image.add_argument("--layer", action="append", required=True)
    image.add_argument("--entrypoint", help="JSON list")
    image.add_argument("--cmd", help="JSON list")
    image.add_argument("--env", action="append", default=[], metavar="K=V")
    image.add_argument("--user")
    image.add_argument("--workdir")
    image.add_argument("--label", action="append", default=[], metavar="K=V")
    image.add_argument("--arch", default={"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine))
    args = p.parse_args()

    if args.command == "image":
        write_image(args)
        return
    tmp = args.out + ".tmp"
    if args.dir:
        owners = {}
        for path, ids in pairs(args.owner, "--owner").items():
            uid, _, gid = ids.partition(":")
            owners["/" + clean(path)] = (int(uid), int(gid or uid))
        write_dir_layer(tmp, args.dir, owners, epoch())
    else:
        write_tar_layer(tmp, args.tar)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
