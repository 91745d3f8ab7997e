"""Chart metadata and distribution: kubeVersion, icon, Artifact Hub, changelog, package.

The Artifact Hub annotations are checked against the chart itself (the
images of a default render, the CRDs in crds/), the kubeVersion against what
the README claims and the API versions the tests validate with, and the
packaged .tgz is linted and rendered like the chart directory.
"""

from __future__ import annotations

import base64
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, NAMESPACE, RELEASE, helm_run, load_yaml, render
from tests.chart.test_lint_and_validate import KUBE_VERSIONS
from tests.conftest import ROOT

CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}


@cache
def chart() -> dict[str, Any]:
    return dict(load_yaml(CHART / "Chart.yaml"))


def annotation(key: str) -> Any:
    return yaml.safe_load(chart()["annotations"][f"artifacthub.io/{key}"])


# -- kubeVersion ----------------------------------------------------------------------------------


def test_kube_version__the_oldest_version_the_readme_claims_and_tests_validate() -> None:
    assert chart()["kubeVersion"] == ">=1.29.0-0"
    oldest = min(KUBE_VERSIONS, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert oldest == "1.29"
    assert "Needs Kubernetes 1.29 or newer" in (CHART / "README.md").read_text()


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_kube_version__an_older_cluster_is_refused(binary: str) -> None:
    done = helm_run("template", RELEASE, str(CHART), "--kube-version", "1.22", binary=binary)
    assert done.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0 which is incompatible with Kubernetes v1.22" in (
        done.stderr
    )


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize("kube", ["1.29.0", "1.34.0"])
def test_kube_version__supported_versions_render(binary: str, kube: str) -> None:
    done = helm_run("template", RELEASE, str(CHART), "--kube-version", kube, binary=binary)
    assert done.returncode == 0, done.stderr


# -- Chart.yaml -----------------------------------------------------------------------------------


def test_icon__an_inline_svg_needing_no_network() -> None:
    icon = chart()["icon"]
    prefix = "data:image/svg+xml;base64,"
    assert icon.startswith(prefix)
    svg = base64.b64decode(icon.removeprefix(prefix)).decode()
    assert svg.startswith("<svg ")
    assert svg.endswith("</svg>")
    assert "http://www.w3.org/2000/svg" in svg
    # Nothing in it is fetched: no external references.
    assert "href" not in svg


def test_maintainers__each_with_a_name_and_a_contact__none_listed_until_there_is_one() -> None:
    # An entry with no way to reach anyone is a placeholder: the chart lists none until the
    # project has a public contact (Chart.yaml says so next to where they go).
    maintainers = chart().get("maintainers", [])
    assert all(m["name"].strip() and (m.get("email") or m.get("url")) for m in maintainers)
    assert maintainers or "No maintainers:" in (CHART / "Chart.yaml").read_text()


def test_home_and_sources__never_the_resonate_servers_repository() -> None:
    for key in ("home", "sources"):
        value = str(chart().get(key, ""))
        assert "resonatehq/resonate" not in value, key
    links = annotation("links")
    assert {link["url"] for link in links} == {"https://github.com/resonatehq/resonate"}
    assert all("upstream" in link["name"] for link in links)


def test_license__the_projects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart()["annotations"]["artifacthub.io/license"] == project["license"] == "Apache-2.0"


def test_artifacthub_images__every_image_a_default_render_runs() -> None:
    rendered = render()
    images = set()
    for _, spec in rendered.pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            images.add(container["image"])
    listed = annotation("images")
    assert (
        {i["image"] for i in listed}
        == images
        == {
            f"resonate-patterns:{chart()['appVersion']}",
            chart()["annotations"]["resonate-patterns.io/server-image"],
        }
    )
    assert all(i["name"] for i in listed)


def test_artifacthub_crds__exactly_the_crds_shipped() -> None:
    shipped = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = load_yaml(path)
        (version,) = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
        shipped.append((crd["spec"]["names"]["kind"], version, crd["metadata"]["name"]))
    listed = annotation("crds")
    assert sorted((c["kind"], c["version"], c["name"]) for c in listed) == sorted(shipped)
    assert all(c["displayName"] and c["description"] for c in listed)


def test_artifacthub_changes__kinds_artifacthub_knows_with_descriptions() -> None:
    changes = annotation("changes")
    assert changes
    for change in changes:
        assert set(change) == {"kind", "description"}
        assert change["kind"] in CHANGE_KINDS
        assert change["description"].strip()


# -- CHANGELOG and README -------------------------------------------------------------------------


def test_changelog__every_version_newest_first_starting_with_this_one() -> None:
    text = (CHART / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+\.\d+\.\d+)$", text, flags=re.MULTILINE)
    assert versions[0] == chart()["version"]
    assert versions == ["0.5.0", "0.4.0", "0.3.0", "0.2.0", "0.1.0"]
    sections = dict(zip(versions, text.split("\n## ")[1:], strict=True))
    assert chart()["annotations"]["resonate-patterns.io/server-image"] in sections["0.5.0"]
    terms = {
        "0.5.0": ("kopfpeerings.kopf.dev", "helm.sh/resource-policy: keep", "backlogApi"),
        "0.4.0": ("extraEnv", "commonAnnotations", "image.digest", "helm.sh/chart", "null"),
    }
    for version, words in terms.items():
        for term in words:
            assert term in sections[version], (version, term)


def test_readme__an_upgrading_section_for_this_version() -> None:
    text = (CHART / "README.md").read_text()
    assert "\n## Upgrading\n" in text
    section = text.split("\n## Upgrading\n", 1)[1].split("\n## ", 1)[0]
    assert "CHANGELOG.md" in section
    assert "### From chart 0.3.x" in section
    assert "restarts every pod once" in section
    assert "kubectl apply" in text.split("\n### CRDs\n", 1)[1]


# -- helm package ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destination = tmp_path_factory.mktemp("package")
    done = helm_run("package", str(CHART), "--destination", str(destination))
    assert done.returncode == 0, done.stderr
    (archive,) = destination.glob("*.tgz")
    assert archive.name == f"resonate-patterns-{chart()['version']}.tgz"
    return archive


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_package__lints_strictly(packaged: Path, binary: str) -> None:
    done = helm_run("lint", "--strict", str(packaged), binary=binary)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_package__renders_what_the_chart_directory_renders(packaged: Path, binary: str) -> None:
    args = ("--namespace", NAMESPACE, "--include-crds")
    from_tgz = helm_run("template", RELEASE, str(packaged), *args, binary=binary)
    from_dir = helm_run("template", RELEASE, str(CHART), *args, binary=binary)
    assert from_tgz.returncode == 0, from_tgz.stderr
    assert [d for d in yaml.safe_load_all(from_tgz.stdout) if d] == [
        d for d in yaml.safe_load_all(from_dir.stdout) if d
    ]


def test_package__carries_the_metadata(packaged: Path) -> None:
    done = helm_run("show", "chart", str(packaged))
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["kubeVersion"] == ">=1.29.0-0"
    assert shown["annotations"] == chart()["annotations"]
    assert shown["icon"] == chart()["icon"]
    readme = helm_run("show", "readme", str(packaged))
    assert "## Upgrading" in readme.stdout
