"""Writing kubeconfig files that point at the test double."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support.pki import Issued


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    *,
    client: Issued | None = None,
    token: str | None = None,
    inline: bool = True,
    name: str = "kubeapi-double",
) -> Path:
    """Write a single-context kubeconfig. With `inline` the PEM data is embedded (``*-data`` keys);
    otherwise it goes to files beside the kubeconfig, referenced by paths relative to it (which
    the loader must resolve against the kubeconfig's folder). JSON is valid YAML, so that is the
    format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cluster: dict[str, str] = {"server": server}
    user: dict[str, str] = {}
    if inline:
        cluster["certificate-authority-data"] = _b64(ca_pem)
        if client is not None:
            user["client-certificate-data"] = _b64(client.cert_file.read_bytes())
            user["client-key-data"] = _b64(client.key_file.read_bytes())
    else:
        stem = path.stem
        (path.parent / f"{stem}-ca.crt").write_bytes(ca_pem)
        cluster["certificate-authority"] = f"{stem}-ca.crt"
        if client is not None:
            (path.parent / f"{stem}-client.crt").write_bytes(client.cert_file.read_bytes())
            (path.parent / f"{stem}-client.key").write_bytes(client.key_file.read_bytes())
            user["client-certificate"] = f"{stem}-client.crt"
            user["client-key"] = f"{stem}-client.key"
    if token is not None:
        user["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path
