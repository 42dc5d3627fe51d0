"""Render the chart offline (Helm's own engine through helm-python-sdk) and validate the manifests.

    python helm/render.py helm/pose-service -f helm/pose-service/ci/cpu-values.yaml --out rendered/

Checks values against values.schema.json, renders like ``helm template``, validates every object against
the Kubernetes OpenAPI schemas of ``--kube-version`` (kubernetes-validate, strict: unknown fields fail),
and writes one multi-document YAML per values file for policy scanners.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

# Custom resources have no schema in kubernetes-validate; their shape is checked by the chart's tests.
CUSTOM_KINDS = {"ServiceMonitor"}


def render(
    chart: Path, values: dict[str, Any] | None = None, release: str = "pose", namespace: str = "pose"
) -> list[dict[str, Any]]:
    """The chart's objects for these values, as ``helm template`` would print them."""
    import helm_python

    loaded = helm_python.Chart.load(chart)
    try:
        loaded.validate_schema(values or {})
        rendered = loaded.render(values or {}, name=release, namespace=namespace, is_install=True)
    finally:
        loaded.close()
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def validate(objects: list[dict[str, Any]], kube_version: str) -> list[str]:
    """Problems found by kubernetes-validate (strict), one line each; empty when all objects are valid."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        if obj.get("kind") in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {err.message}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--kube-version", default="1.30", help="Kubernetes schema version to validate against")
    parser.add_argument("--out", type=Path, help="folder for the rendered manifests")
    args = parser.parse_args(argv)
    failed = False
    for values_file in [None, *args.values]:
        values = yaml.safe_load(values_file.read_text()) if values_file else {}
        label = values_file.stem if values_file else "default"
        objects = render(args.chart, values)
        problems = validate(objects, args.kube_version)
        kinds = ", ".join(sorted(o["kind"] for o in objects))
        print(f"{label}: {len(objects)} objects ({kinds}); {len(problems)} problems")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{label}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
