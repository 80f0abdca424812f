"""Checks every TrafficPolicy example under control/testdata against the CRD's openAPIV3Schema
(manifests/crd-trafficpolicy.yaml), since kubernetes-validate knows only built-in kinds.

Examples in a directory named bad_* must be refused; all others must pass. CEL rules
(x-kubernetes-validations) are not evaluated here; control's own validation covers them.
Usage: python validate-trafficpolicies.py  (from the repository root). Exit 3: jsonschema missing.
"""
import glob
import os
import sys

try:
    import jsonschema
except ImportError:
    sys.exit(3)
import yaml

with open("manifests/crd-trafficpolicy.yaml") as f:
    crd = yaml.safe_load(f)
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


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


strict(schema)
validator = jsonschema.Draft4Validator(schema)

good = bad = 0
failed = []
for path in sorted(glob.glob("control/testdata/**/*.yaml", recursive=True)):
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    expect_bad = os.path.basename(os.path.dirname(path)).startswith("bad_")
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict) or doc.get("kind") != "TrafficPolicy":
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        where = f"{path}: document {i}"
        if expect_bad and not errors:
            failed.append(f"{where}: expected the CRD schema to refuse it, but it passed")
        elif not expect_bad and errors:
            for e in errors:
                failed.append(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        elif expect_bad:
            bad += 1
        else:
            good += 1

for line in failed:
    print(line, file=sys.stderr)
if failed:
    sys.exit(1)
print(f"schema: {good} TrafficPolicy examples valid against the CRD's openAPIV3Schema, {bad} bad ones refused")
