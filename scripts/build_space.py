"""Assemble a Hugging Face Space folder: the app, its packages, the examples, and the Space's README.

    python scripts/build_space.py --out build/space
    cd build/space && git init && git remote add space https://huggingface.co/spaces/USER/NAME && ...

The repository's README starts with its install commands, so the Space front matter lives in
space/README.md, which becomes the Space's README.md; space/requirements.txt and space/packages.txt
(apt packages OpenCV needs) go beside it, with a .gitattributes routing binary files to Git LFS.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ("app.py", "editing", "ui", "assets")
SPACE_FILES = ("README.md", "requirements.txt", "packages.txt")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
LFS_PATTERNS = ("*.mp4", "*.avi", "*.gif", "*.png", "*.safetensors", "*.zip")  # Hub Spaces take binary files only through LFS


def build_space(out: Path, root: Path = ROOT) -> Path:
    """Copy the app and the Space files into `out` (which must not exist or be empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for name in CODE:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=IGNORE)
        else:
            shutil.copy2(source, out / name)
    for name in SPACE_FILES:
        shutil.copy2(root / "space" / name, out / name)
    (out / ".gitattributes").write_text("".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (empty or missing)")
    args = parser.parse_args(argv)
    out = build_space(Path(args.out))
    print(f"wrote the Space to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
