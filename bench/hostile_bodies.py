#!/usr/bin/env python3
"""Writes one hostile AdmissionReview body of a given shape, as large as the API server could send
(3 MiB, its own request limit), for bench/webhook.sh's hostile-body phase.

Usage: hostile_bodies.py SHAPE OUT_FILE   (hostile_bodies.py --list prints the shapes)

Every body is a valid AdmissionReview for a pod CREATE built on the plain-pod fixture, with one part
blown up: the webhook must answer each within its timeout, in bounded memory."""
import json
import sys

LIMIT = 3 * 1024 * 1024
FIXTURE = "webhook/testdata/reviews/plain-pod.json"


def review(fill):
    """The plain-pod review, with `fill(obj, room)` adding as much as fits in `room` bytes."""
    with open(FIXTURE, encoding="utf-8") as f:
        base = json.load(f)
    base["request"]["uid"] = "hostile"
    obj = base["request"]["object"]
    room = LIMIT - len(json.dumps(base, separators=(",", ":"))) - 64
    fill(obj, room)
    return json.dumps(base, separators=(",", ":")).encode()


def containers(obj, room):
    # {"name":"c1234567"}, : about 20 bytes a container
    n = room // 20
    obj["spec"]["containers"] += [{"name": f"c{i:07d}"} for i in range(n)]


def ports(obj, room):
    # {"containerPort":12345}, : 24 bytes a port
    n = room // 24
    obj["spec"]["containers"][0]["ports"] = [{"containerPort": 1 + i % 65535} for i in range(n)]


def annotations(obj, room):
    # "a1234567":"", : 14 bytes an annotation
    n = room // 14
    obj["metadata"]["annotations"] = {f"a{i:07d}": "" for i in range(n)}


def long_value(obj, room):
    # A Trellis annotation whose (invalid) value is the whole body: echoed back, it would be 3 MiB.
    obj["metadata"]["annotations"] = {"trellis.dev/max-connections": "9" * (room - 40)}


def misspelt_key(obj, room):
    # A misspelt Trellis key 1 MiB long: "did you mean" would compare it with every known key.
    key = "trellis.dev/max-connection" + "s" * (1024 * 1024)
    obj["metadata"]["annotations"] = {key: "10"}


def long_strings(obj, room):
    # Fields injection never reads, made huge: an image name and an env value.
    half = room // 2 - 64
    c = obj["spec"]["containers"][0]
    c["image"] = "r/" + "x" * half
    c["env"] = [{"name": "BIG", "value": "y" * half}]


def wide_nesting(obj, room):
    # An unknown field holding a million empty arrays: cheap to send, costly to materialise.
    n = room // 3
    obj["spec"]["x-unknown"] = [[] for _ in range(n)]


def deep_nesting(obj, room):
    # Nesting far past any parser's recursion limit.
    n = (room - 16) // 2
    obj["spec"]["x-deep"] = "@"
    return n


SHAPES = {
    "containers": containers,
    "ports": ports,
    "annotations": annotations,
    "long-value": long_value,
    "misspelt-key": misspelt_key,
    "long-strings": long_strings,
    "wide-nesting": wide_nesting,
    "deep-nesting": deep_nesting,
}


def main():
    if sys.argv[1:] == ["--list"]:
        print(" ".join(SHAPES))
        return
    shape, out = sys.argv[1], sys.argv[2]
    if shape == "deep-nesting":
        # json.dumps cannot nest this deep: splice the brackets into the text instead.
        holder = {}
        body = review(lambda obj, room: holder.setdefault("n", deep_nesting(obj, room)))
        n = holder["n"]
        body = body.replace(b'"@"', b"[" * n + b"]" * n, 1)
    else:
        body = review(SHAPES[shape])
    assert len(body) <= LIMIT, (shape, len(body))
    with open(out, "wb") as f:
        f.write(body)


main()
