#!/usr/bin/env python3
"""Removes what the real node put into the host's nftables, and nothing else.

kube-proxy (nftables mode) owns whole tables named `kube-proxy`. The kubelet (KUBE-* chains)
and the CNI bridge plugin (CNI-* chains, for masquerading pod traffic) go through iptables-nft,
so their chains sit in the shared `filter`, `nat` and `mangle` tables, beside rules of other
programs: only their chains, and the rules elsewhere that jump to them, are deleted.
"""
import json
import subprocess

OURS = ("KUBE-", "CNI-")


def nft(*args):
    return subprocess.run(["nft", *args], capture_output=True, text=True)


def refers_to_ours(rule):
    text = json.dumps(rule.get("expr", []))
    return any(f'"{prefix}' in text for prefix in OURS)


for family in ("ip", "ip6", "inet"):
    nft("delete", "table", family, "kube-proxy")
    listing = nft("-j", "list", "tables", family)
    if listing.returncode:
        continue
    for entry in json.loads(listing.stdout)["nftables"]:
        table = entry.get("table", {}).get("name")
        if table not in ("filter", "nat", "mangle", "raw"):
            continue
        content = nft("-j", "list", "table", family, table)
        if content.returncode:
            continue
        objects = json.loads(content.stdout)["nftables"]
        ours = [o["chain"]["name"] for o in objects if "chain" in o and o["chain"]["name"].startswith(OURS)]
        # Rules first (a chain that is jumped to cannot be deleted), then the chains.
        for o in objects:
            rule = o.get("rule")
            if rule and (rule["chain"].startswith(OURS) or refers_to_ours(rule)):
                nft("delete", "rule", family, table, rule["chain"], "handle", str(rule["handle"]))
        for chain in ours:
            nft("delete", "chain", family, table, chain)
        if ours:
            print(f"removed {len(ours)} chains from {family} {table}")
