"""Every kubectl from 1.27 to 1.33 against standalone mode: explain, get in every output, delete, create.

Machines of this kind carry these binaries beside the gcloud SDK (``kubectl.1.NN``); a missing one fails
the test rather than skipping it, because the tier claims each version works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
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
async def test_get_of_a_missing_tag_names_it(versioned: Kubectl, registry: Any, repo: str) -> None:
    """review-newcomer L4: after the tag's 404 every kubectl asks for the namespace (not "default"),
    and standalone payloadtags' 404 for that path made kubectl print "the server could not find the
    requested resource" in place of the tag's own NotFound. Standalone, that check is answered 403."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    name = encode_name(path, "v1")
    ok(await versioned("delete", "prt", "-n", namespace, name))
    for missing in (name, name + "typo"):
        result = await versioned("get", "prt", "-n", namespace, missing)
        assert (result.code, result.out) == (1, "")
        assert result.err.strip().splitlines()[-1] == (
            f'Error from server (NotFound): {RESOURCE} "{missing}" not found'
        )


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


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_get_name_w_watches_from_0_as_docs_consistency_says(
    versioned: Kubectl, registry: Any, repo: str
) -> None:
    """docs/consistency.md, on why tags have no resourceVersion of their own, said that `kubectl get prt
    NAME -w` watches from the object's resourceVersion. Every kubectl watches a single object from "0"
    (its resourceVersion is no watch position): what the docs say now, checked against each one."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    name = encode_name(path, "v1")
    # The watch runs until the request timeout: its request is in the -v=6 log either way.
    watched = await versioned("get", "prt", "-n", namespace, name, "-w", "-v=6", "--request-timeout=2s")
    urls = [url for url in re.findall(r"https://[^\s\"]+", watched.err) if "watch=true" in url]
    assert urls, watched.err
    for url in urls:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert (query["fieldSelector"], query["resourceVersion"]) == ([f"metadata.name={name}"], ["0"]), url
    docs = " ".join((Path(__file__).parents[2] / "docs" / "consistency.md").read_text().split())
    assert 'kubectl 1.27 to 1.33 watch a single object from `"0"`' in docs
    assert "watch from the object's resourceVersion" not in docs
    assert "starts its watch from the object's" not in docs


def _docs_jq_line(listed: str) -> str:
    """The jq of docs/troubleshooting.md's `kubectl get prt -n NS -o json | jq ...` line, run on `listed`."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    [expression] = re.findall(r"kubectl get prt -n NS -o json \| jq -r '([^']+)'", doc)
    jq = subprocess.run(["jq", "-r", expression], input=listed, capture_output=True, text=True, check=True)
    return jq.stdout


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_sort_by_as_docs_troubleshooting_says(versioned: Kubectl, registry: Any, repo: str) -> None:
    """review-newcomer L3: the usual `--sort-by=.metadata.creationTimestamp` prints "No resources found"
    (tags have none, and kubectl drops every row when no row has the field); the fields
    docs/troubleshooting.md gives instead sort, and so does its jq line."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v2")
    images.push_oci_image(registry, repo, "v1", seed="other")
    images.push_oci_image(registry, f"{repo}/a", "v0", seed="third")
    nothing = ok(await versioned("get", "prt", "-n", namespace, "--sort-by=.metadata.creationTimestamp"))
    assert (nothing.out, nothing.err.strip()) == ("", f"No resources found in {namespace} namespace.")
    rows = {
        field: ok(await versioned("get", "prt", "-n", namespace, f"--sort-by={field}")).lines()[1:]
        for field in (".metadata.name", ".spec.repositoryPath", ".spec.tag")
    }
    # Every row (in kubectl's natural order, which differs between versions: digits by their value).
    assert sorted(rows[".metadata.name"]) == sorted(rows[".spec.tag"])
    assert [repository for _, repository, _ in rows[".spec.repositoryPath"]] == [path, path, f"{path}/a"]
    assert [tag for _, _, tag in rows[".spec.tag"]] == ["v0", "v1", "v2"]
    listed = ok(await versioned("get", "prt", "-n", namespace, "-o", "json")).out
    assert [address.split("/", 1)[1] for address in _docs_jq_line(listed).split()] == [
        f"{repo}:v1",
        f"{repo}:v2",
        f"{repo}/a:v0",
    ]
