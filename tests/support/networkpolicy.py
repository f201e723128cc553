"""What manifests/components/network-policy must admit, checked by scripts/check-deploy and the unit tests.

docs/install.md (section 4) promises a policy that admits, on the ``https`` port only, kube-apiserver from
the control plane's address range, kube-apiserver through Konnectivity agents in ``kube-system`` and
Prometheus pods in ``monitoring``. NetworkPolicy rules are unions and their empty forms are wildcards: a
rule without ``from`` (or with ``from: []``), a peer ``{}``, an empty ``namespaceSelector`` or
``podSelector``, or an ipBlock of ``0.0.0.0/0`` each admit far more than that. So every peer must be one of
the documented ones exactly, not merely of the right kind
(https://kubernetes.io/docs/concepts/services-networking/network-policies/).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

PLACEHOLDER_RANGE = "192.0.2.0/24"
HTTPS_ONLY = [{"protocol": "TCP", "port": "https"}]
KONNECTIVITY = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "konnectivity-agent"}},
}
PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


# docs/install.md section 4 asks for "the addresses kube-apiserver connects from (the control plane
# nodes)": a few addresses. A range wider than these holds more than a control plane (a /8 or /12 is a
# whole private block, usually the nodes and the pod network with them), and an implementation may
# match pods' addresses against an ipBlock (Calico does), so every pod would be admitted.
WIDEST_PREFIX = {4: 16, 6: 48}
# RFC 6598's shared address space: not "private" for Python, but where some providers put a control plane.
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


# Go's ParseCIDR grammar: an address without a zone, "/", a decimal prefix length (RFC 4632, RFC 4291).
_GO_CIDR = re.compile(r"[0-9A-Fa-f.:]+/[0-9]+")
# IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2): ::ffff:a.b.c.d.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _go_network(text: object) -> Network | None:
    """The range a CIDR stands for, read as kube-apiserver reads it (Go's ParseCIDR: host bits dropped),
    or None when it is none. Python also takes a netmask or hostmask after the "/" and an IPv6 zone,
    which Go refuses."""
    if not isinstance(text, str) or _GO_CIDR.fullmatch(text) is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _as_ipv4(network: Network) -> ipaddress.IPv4Network | None:
    """The IPv4 range an IPv4-mapped IPv6 range matches, else None. Go's IPNet.Contains reads such a
    range's address as IPv4 and its mask's last 32 bits, and matches an IPv4 source against them:
    ::ffff:0.0.0.0/96 is every IPv4 address, ::ffff:10.0.0.0/104 is 10.0.0.0/8."""
    if not isinstance(network, ipaddress.IPv6Network) or not network.subnet_of(_IPV4_MAPPED):
        return None
    mapped = network.network_address.ipv4_mapped
    assert mapped is not None  # inside ::ffff:0:0/96
    return ipaddress.IPv4Network((mapped, network.prefixlen - 96))


def _range_problem(peer: dict[str, Any]) -> str | None:
    """None if ``peer`` is an ipBlock of one private range no wider than a control plane's, else why not."""
    block = peer.get("ipBlock")
    if set(peer) != {"ipBlock"} or not isinstance(block, dict) or set(block) - {"cidr", "except"}:
        return f"a peer that is not one of the documented ones: {peer}"
    cidr = block.get("cidr")
    if cidr == PLACEHOLDER_RANGE:
        return f"the control plane's range is still the placeholder {PLACEHOLDER_RANGE}"
    network = _go_network(cidr)
    if network is None:
        return f"ipBlock {cidr!r} is not an address range (a CIDR such as 10.0.0.0/24)"
    address = ipaddress.ip_address(str(cidr).partition("/")[0])
    if address != network.network_address:
        # kube-apiserver takes 10.0.0.5/8 as 10.0.0.0/8 with a warning that the value is ambiguous (the
        # range, or the one address?), and refuses it where StrictIPCIDRValidation is on (alpha since 1.33).
        return (
            f"ipBlock {cidr} has bits set after its prefix, which kube-apiserver reads as {network} and "
            f"calls ambiguous (newer ones refuse it): write {network} for the range, or "
            f"{address}/{network.max_prefixlen} for the one address"
        )
    ipv4 = _as_ipv4(network)
    if ipv4 is not None:
        # Judged as the IPv4 range it matches; and refused even when that one would do, since policy
        # agents differ on it (some never match an IPv4 source against an IPv6 block).
        return _width_problem(f"{cidr} (the IPv4 range {ipv4})", ipv4) or (
            f"ipBlock {cidr} is the IPv4 range {ipv4} written as an IPv4-mapped IPv6 range, which not every "
            f"NetworkPolicy implementation matches IPv4 sources against: write {ipv4}"
        )
    return _width_problem(str(cidr), network) or _except_problem(str(cidr), network, block.get("except"))


def _width_problem(cidr: str, network: Network) -> str | None:
    """Why ``network`` admits more than a control plane's addresses, if it does."""
    if network.prefixlen == 0:
        return f"ipBlock {cidr} admits every source"
    if network.network_address.is_unspecified:
        # 0.0.0.0/8 is "private" for Python, but it is "this network": no connection comes from it.
        return f"ipBlock {cidr} is the unspecified address range, which no connection comes from"
    # A control plane sits in private address space (or the shared one); a public range admits the world.
    shared = isinstance(network, ipaddress.IPv4Network) and network.subnet_of(SHARED_ADDRESS_SPACE)
    if not (network.is_private or shared):
        return f"ipBlock {cidr} admits addresses outside private networks"
    if network.prefixlen < WIDEST_PREFIX[network.version]:
        return (
            f"ipBlock {cidr} is wider than a /{WIDEST_PREFIX[network.version]}: docs/install.md asks for the "
            "addresses kube-apiserver connects from (the control plane nodes), and a range this wide usually "
            "holds the cluster's nodes and pods too, which it would admit"
        )
    return None


def _except_problem(cidr: str, network: Network, excepted: object) -> str | None:
    """Why an ipBlock's ``except`` list is refused by kube-apiserver or leaves the block admitting no
    address, if it is or does."""
    if excepted is None:
        return None
    if not isinstance(excepted, list):
        return f"ipBlock {cidr}: except must be a list of ranges, not {excepted!r}"
    ranges: list[Network] = []
    for entry in excepted:
        inner = _go_network(entry)
        if isinstance(network, ipaddress.IPv4Network) and isinstance(inner, ipaddress.IPv6Network):
            if inner.network_address.ipv4_mapped is not None:
                # kube-apiserver takes it (Go's IPNet.Contains reads the address as IPv4, and compares
                # the mask lengths as plain numbers, so even ::ffff:10.0.0.0/100 passes): refused here
                # as the cidr is, since policy agents differ on matching IPv4 sources against it.
                ipv4 = _as_ipv4(inner)
                instead = f": write {ipv4}" if ipv4 is not None else ""
                return (
                    f"ipBlock {cidr}: except entry {entry!r} is an IPv4-mapped IPv6 range, which not every "
                    f"NetworkPolicy implementation matches IPv4 sources against{instead}"
                )
        # kube-apiserver's ValidateIPBlock: each entry is a CIDR, a strict subset of the block's.
        if inner is None or not _inside(inner, network):
            return (
                f"ipBlock {cidr}: except entry {entry!r} is not a range inside it (kube-apiserver refuses it)"
            )
        if inner.prefixlen == network.prefixlen:
            return f"ipBlock {cidr}: except entry {entry!r} is the whole range (kube-apiserver refuses it)"
        ranges.append(inner)
    # Each is inside the block: together they are the whole block when they merge into it.
    merged = [
        *ipaddress.collapse_addresses(r for r in ranges if isinstance(r, ipaddress.IPv4Network)),
        *ipaddress.collapse_addresses(r for r in ranges if isinstance(r, ipaddress.IPv6Network)),
    ]
    if merged == [network]:
        return f"ipBlock {cidr}: its except entries cover the whole range, so it admits no address"
    return None


def _inside(inner: Network, outer: Network) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def admission_problems(objects: list[dict[str, Any]], pod_labels: dict[str, str]) -> list[str]:
    """Why the NetworkPolicies among ``objects`` admit more or other than docs/install.md says, if so."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    if len(policies) != 1:
        # Policies add up: a second one selecting the pods widens what the first admits.
        return [f"expected one NetworkPolicy, found {len(policies)}"]
    spec = policies[0].get("spec") or {}
    problems = []
    if spec.get("policyTypes") != ["Ingress"]:
        problems.append("the NetworkPolicy must restrict ingress (policyTypes: [Ingress])")
    if spec.get("podSelector") != {"matchLabels": pod_labels}:
        problems.append("the NetworkPolicy must select the payloadtags pods")
    seen_apiserver = seen_prometheus = False
    for index, rule in enumerate(spec.get("ingress") or []):
        if rule.get("ports") != HTTPS_ONLY:
            problems.append(f"ingress rule {index} must admit the https port only, not {rule.get('ports')}")
        peers = rule.get("from")
        if not peers:
            # Absent or empty, `from` matches every source.
            problems.append(f"ingress rule {index} has no `from`, so it admits every source")
            continue
        for peer in peers:
            if peer == PROMETHEUS:
                seen_prometheus = True
            elif peer != KONNECTIVITY:
                problem = _range_problem(peer)
                if problem is None:
                    seen_apiserver = True
                else:
                    problems.append(f"ingress rule {index}: {problem}")
    if not seen_apiserver:
        problems.append("the NetworkPolicy does not admit kube-apiserver from the control plane's range")
    if not seen_prometheus:
        problems.append("the NetworkPolicy does not admit Prometheus")
    return problems
