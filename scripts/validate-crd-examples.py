"""Checks every example of a Trellis kind under control/testdata (TrafficPolicy, HTTPFault) against
its CRD's openAPIV3Schema (manifests/crd-*.yaml), since kubernetes-validate knows only built-in
kinds.

Examples in a directory named bad_* must be refused; all others must pass. CEL rules
(x-kubernetes-validations) are not evaluated here; control's own validation covers them.
Usage: python validate-crd-examples.py  (from the repository root). Exit 3: jsonschema missing.
"""
import glob
import os
import sys

try:
    import jsonschema
except ImportError:
    sys.exit(3)
import yaml

CRDS = {
    "TrafficPolicy": "manifests/crd-trafficpolicy.yaml",
    "HTTPFault": "manifests/crd-httpfault.yaml",
}


def strict(node):
    """Unknown fields refused, as the API server does under `kubectl --validate=strict`
    (structural schemas otherwise prune them silently)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


validators = {}
for kind, path in CRDS.items():
    with open(path) as f:
        crd = yaml.safe_load(f)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    strict(schema)
    validators[kind] = jsonschema.Draft4Validator(schema)

good = {kind: 0 for kind in CRDS}
bad = {kind: 0 for kind in CRDS}
failed = []
for path in sorted(glob.glob("control/testdata/**/*.yaml", recursive=True)):
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    expect_bad = os.path.basename(os.path.dirname(path)).startswith("bad_")
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict) or doc.get("kind") not in validators:
            continue
        kind = doc["kind"]
        errors = sorted(validators[kind].iter_errors(doc), key=lambda e: list(e.path))
        where = f"{path}: document {i}"
        if expect_bad and not errors:
            failed.append(f"{where}: expected the CRD schema to refuse it, but it passed")
        elif not expect_bad and errors:
            for e in errors:
                failed.append(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        elif expect_bad:
            bad[kind] += 1
        else:
            good[kind] += 1

for line in failed:
    print(line, file=sys.stderr)
if failed:
    sys.exit(1)
for kind in CRDS:
    print(
        f"schema: {good[kind]} {kind} examples valid against the CRD's openAPIV3Schema, "
        f"{bad[kind]} bad ones refused"
    )
