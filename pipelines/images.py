"""Which images a compiled pipeline runs: a tag that says what was built, digests once pushed.

    python -m pipelines.images tag                          # the TAG the Makefile builds under
    python -m pipelines.images check-clean                  # exit 2 when the tree has changes
    python -m pipelines.images record CPU_REF GPU_REF       # after docker push: build/images.json

KFP caches a step by its image reference, and a tag can be moved: the same tag built from
two trees, or pushed again, makes a cached step and a new one run different code under one
key. So:

* the **tag** is ``<git short sha>-<lock digest>`` (the first 8 hex of the sha256 of both
  image locks), and ``-dirty`` is appended when the files that go into the images
  (lcron/, pyproject.toml, README.md, docker/) differ from that commit;
* ``make push`` refuses a dirty tree (``ALLOW_DIRTY=1`` pushes it under its ``-dirty`` tag)
  and then records the **digest** each pushed tag resolved to (``build/images.json``);
* ``make pipeline`` compiles with those digests (``REPO@sha256:...``) when the record is of
  the tags it compiles for, so a run executes exactly the image built from that commit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_INPUTS = ("lcron", "pyproject.toml", "README.md", "docker")
LOCKS = ("docker/lock-cpu.txt", "docker/lock-gpu.txt")
RECORD = ROOT / "build" / "images.json"
VARIANTS = ("cpu", "gpu")


def _git(*args: str, root: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def lock_digest(root: Path = ROOT) -> str:
    """First 8 hex of the sha256 of both locks: a tag changes when the images' packages do."""
    h = hashlib.sha256()
    for rel in LOCKS:
        path = root / rel
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:8]


def dirty_files(root: Path = ROOT) -> list[str]:
    """Files that go into the images and differ from HEAD (untracked ones included)."""
    out = _git("status", "--porcelain", "--untracked-files=all", "--", *IMAGE_INPUTS, root=root)
    return [line[3:] for line in out.splitlines() if line.strip()]


def source_tag(root: Path = ROOT) -> str:
    """``<sha>-<lock digest>``, ``-dirty`` when the images' files differ from the commit."""
    try:
        sha = _git("rev-parse", "--short", "HEAD", root=root).strip()
    except (OSError, subprocess.CalledProcessError):
        return f"nogit-{lock_digest(root)}"
    tag = f"{sha}-{lock_digest(root)}"
    return f"{tag}-dirty" if dirty_files(root) else tag


def repo_digest(ref: str) -> str:
    """``REPO@sha256:...`` that the pushed ``ref`` (``REPO:TAG``) resolved to in its registry."""
    res = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", ref],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"images: {ref} is not a local image: {res.stderr.strip()}")
    repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    digests = [d for d in json.loads(res.stdout or "[]") if d.split("@", 1)[0] == repo]
    if not digests:
        raise SystemExit(f"images: {ref} has no digest in {repo}: push it first (docker push {ref})")
    return digests[0]


def record(refs: dict[str, str], path: Path = RECORD) -> dict[str, dict[str, str]]:
    """Write what each variant's pushed tag resolved to; returns the record."""
    doc = {variant: {"tag": ref, "digest": repo_digest(ref)} for variant, ref in refs.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return doc


def pushed_refs(tag_refs: dict[str, str], path: Path = RECORD) -> dict[str, str]:
    """The digest reference of each variant when ``path`` records exactly these tags pushed;
    otherwise the tag references themselves (nothing pushed yet, or another build)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(tag_refs)
    out = {}
    for variant, ref in tag_refs.items():
        entry = doc.get(variant) if isinstance(doc, dict) else None
        ok = isinstance(entry, dict) and entry.get("tag") == ref and "@sha256:" in str(entry.get("digest", ""))
        out[variant] = entry["digest"] if ok else ref
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("tag", "check-clean", "record"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    if argv[0] == "tag":
        print(source_tag())
        return 0
    if argv[0] == "check-clean":
        dirty = dirty_files()
        if dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            print(f"images: the tree has changes not in a commit ({shown}): commit them, or push the -dirty tag "
                  "with ALLOW_DIRTY=1", file=sys.stderr)
            return 2
        return 0
    if len(argv) != 1 + len(VARIANTS):
        print("usage: python -m pipelines.images record CPU_REF GPU_REF", file=sys.stderr)
        return 2
    doc = record(dict(zip(VARIANTS, argv[1:])))
    for variant, entry in doc.items():
        print(f"{variant}: {entry['tag']} -> {entry['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
