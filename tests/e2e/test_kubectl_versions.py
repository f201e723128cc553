"""Every kubectl from 1.27 to 1.33 against standalone mode: explain, get in every output, delete, create.

Machines of this kind carry these binaries beside the gcloud SDK (``kubectl.1.NN``); a missing one fails
the test rather than skipping it, because the tier claims each version works.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from payloadtags.names import encode_name
from tests.support import images
from tests.support.kubectl import Kubectl, Result

GROUP = "payload-registry.deckhouse.io"
RESOURCE = f"payloadrepositorytags.{GROUP}"
VERSIONS = [f"1.{minor}" for minor in range(27, 34)]


def _sdk_dir() -> Path | None:
    gcloud = shutil.which("gcloud")
    return Path(os.path.realpath(gcloud)).parent if gcloud else None


def binary(version: str) -> str:
    directory = _sdk_dir()
    path = directory / f"kubectl.{version}" if directory else None
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(f"kubectl {version} is missing: expected kubectl.{version} beside gcloud ({directory})")
    return str(path)


@pytest.fixture(params=VERSIONS)
def versioned(request: Any, api: Any, tmp_path: Path, pki: Any) -> Kubectl:
    version = request.param
    return Kubectl.write(
        tmp_path / f"kube-{version}", api.url, pki.server_ca.cert_file, pki.admin, binary=binary(version)
    )


def ok(result: Result) -> Result:
    assert result.code == 0, f"kubectl exited {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    return result


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain(versioned: Kubectl) -> None:
    result = ok(await versioned("explain", RESOURCE))
    assert "KIND:" in result.out and "PayloadRepositoryTag" in result.out
    assert "spec\t<" in result.out and "status\t<" in result.out
    spec = ok(await versioned("explain", f"{RESOURCE}.spec.repositoryPath"))
    assert "repositoryPath" in spec.out


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_get_in_every_output_then_delete(versioned: Kubectl, registry: Any, repo: str) -> None:
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    name = encode_name(path, "v1")
    table = ok(await versioned("get", "prt", "-n", namespace))
    assert table.lines() == [["NAME", "REPOSITORY", "TAG"], [name, path, "v1"]]
    wide = ok(await versioned("get", "prt", "-n", namespace, "-o", "wide"))
    assert wide.lines()[0] == ["NAME", "REPOSITORY", "TAG", "ADDRESS"]
    assert ok(await versioned("get", "prt", "-n", namespace, "-o", "name")).out.split() == [
        f"payloadrepositorytag.{GROUP}/{name}"
    ]
    as_json = ok(await versioned("get", "prt", "-n", namespace, name, "-o", "json")).json()
    assert (as_json["spec"]["repositoryPath"], as_json["spec"]["tag"]) == (path, "v1")
    as_yaml = ok(await versioned("get", "prt", "-n", namespace, name, "-o", "yaml")).out
    assert f"repositoryPath: {path}" in as_yaml
    jsonpath = ok(await versioned("get", "prt", "-n", namespace, "-o", "jsonpath={.items[*].spec.tag}"))
    assert jsonpath.out == "v1"
    columns = ok(
        await versioned(
            "get", "prt", "-n", namespace, "-o", "custom-columns=TAG:.spec.tag,PATH:.spec.repositoryPath"
        )
    )
    assert columns.lines() == [["TAG", "PATH"], ["v1", path]]
    template = ok(await versioned("get", "prt", "-n", namespace, name, "-o", "go-template={{.spec.tag}}"))
    assert template.out == "v1"
    deleted = ok(await versioned("delete", "prt", "-n", namespace, name))
    assert deleted.out.strip() == f'payloadrepositorytag.{GROUP} "{name}" deleted'
    assert images.list_tags(registry, repo) == []


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_create_is_method_not_allowed(
    versioned: Kubectl, registry: Any, repo: str, tmp_path: Path
) -> None:
    namespace, path = repo.split("/", 1)
    manifest = tmp_path / "prt.json"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": "PayloadRepositoryTag",
                # Labels and annotations pass kubectl's check against the OpenAPI schema.
                "metadata": {
                    "name": encode_name(path, "v1"),
                    "namespace": namespace,
                    "labels": {"team": "a"},
                    "annotations": {"note": "b"},
                },
                "spec": {"repositoryPath": path, "tag": "v1", "address": f"r.example.com/{repo}:v1"},
            }
        )
    )
    result = await versioned("create", "-f", str(manifest))
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        f'Error from server (MethodNotAllowed): error when creating "{manifest}": '
        f'create is not supported on resources of kind "{RESOURCE}"'
    )
    assert images.list_tags(registry, repo) == []
