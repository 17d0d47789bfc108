"""Lint and render a Helm chart with the real Helm engine, for the Rust tests (tests/src/helm.rs).

Helm's Go SDK (v4) comes from PyPI's helm-python-sdk, pinned in the Makefile's `helm-venv`
target; run this with that venv's interpreter. One JSON request on stdin, one JSON answer on
stdout: {"ok": ...} or {"error": {"kind": ..., "message": ...}}. Helm's own errors (a value
the schema refuses, a template that fails) are answers, not crashes; a malformed request
exits non-zero.

Requests ("action" and what it reads):
  render   chart, values, values_files, name, namespace, is_upgrade
           -> {"objects": [{"template", "object"}], "notes"}: Chart.render, offline, as
              `helm template` does; it validates the values against values.schema.json.
  install  chart, values, values_files, name, namespace
           -> {"objects": [...], "notes"}: `helm install --dry-run=client` against in-memory
              release storage, which also checks Chart.yaml's kubeVersion.
  lint     chart, values, values_files, namespace, strict, kube_version
           -> {"errors": [str], "messages": [{"severity", "path", "error"}]}
  yaml     file -> {"documents": [...]}: every YAML document of a file, parsed by Helm.

Manifests are split into documents as Helm does and each is parsed with Helm's own YAML
reader (values_from_yaml), so no other YAML library is involved.
"""

import json
import re
import sys

import helm_python as helm

PINNED = "0.2.2"

# Helm's releaseutil.SplitManifests separator.
SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"


def merge(base, override):
    """Helm's `-f a -f b` merge: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def user_values(request):
    """The values files in order, then the inline values on top, as `-f ... --set-json`."""
    values = {}
    for path in request.get("values_files", []):
        with open(path, encoding="utf-8") as file:
            values = merge(values, helm.values_from_yaml(file.read()))
    return merge(values, request.get("values") or {})


def documents(text):
    """Every non-empty YAML document of a stream, each a mapping."""
    return [doc for doc in (helm.values_from_yaml(part) for part in SEPARATOR.split(text)) if doc]


def render(request):
    chart = helm.Chart.load(request["chart"])
    try:
        manifests = chart.render(
            values=user_values(request),
            name=request.get("name", "zbase"),
            namespace=request.get("namespace", "zbase-system"),
            is_install=not request.get("is_upgrade", False),
            is_upgrade=request.get("is_upgrade", False),
        )
    finally:
        chart.close()
    objects, notes = [], ""
    for template in sorted(manifests):
        if template.endswith("NOTES.txt"):
            notes = manifests[template]
            continue
        objects += [{"template": template, "object": doc} for doc in documents(manifests[template])]
    return {"objects": objects, "notes": notes}


def install(request):
    namespace = request.get("namespace", "zbase-system")
    config = helm.Config(storage_driver="memory", namespace=namespace, kubeconfig_content=KUBECONFIG)
    chart = helm.Chart.load(request["chart"])
    try:
        release = config.install(
            chart,
            request.get("name", "zbase"),
            user_values(request),
            dry_run="client",
            namespace=namespace,
        )
    finally:
        chart.close()
        config.close()
    objects, template = [], ""
    for part in SEPARATOR.split(release.get("manifest", "")):
        source = re.search(r"^# Source: (.*)$", part, re.MULTILINE)
        template = source.group(1) if source else template
        doc = helm.values_from_yaml(part)
        if doc:
            objects.append({"template": template, "object": doc})
    return {"objects": objects, "notes": release.get("notes", "")}


def lint(request):
    report = helm.lint(
        request["chart"],
        user_values(request),
        strict=request.get("strict", True),
        namespace=request.get("namespace", "zbase-system"),
        kube_version=request.get("kube_version"),
    )
    return {"errors": report.get("errors", []), "messages": report.get("messages", [])}


def yaml(request):
    with open(request["file"], encoding="utf-8") as file:
        return {"documents": documents(file.read())}


ACTIONS = {"render": render, "install": install, "lint": lint, "yaml": yaml}


def main():
    if helm.__version__ != PINNED:
        sys.exit(f"helm-python-sdk {helm.__version__} found, {PINNED} pinned: run `make helm-venv`")
    request = json.load(sys.stdin)
    action = ACTIONS.get(request.get("action"))
    if action is None:
        sys.exit(f"unknown action {request.get('action')!r}; known: {', '.join(ACTIONS)}")
    try:
        answer = {"ok": action(request)}
    except helm.HelmError as error:
        answer = {"error": {"kind": type(error).__name__, "message": str(error)}}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
