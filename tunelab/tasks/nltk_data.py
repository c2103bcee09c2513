"""Install NLTK's punkt_tab tokenizer tables into the virtualenv, offline-safe afterwards.

lm-eval's IFEval checkers need punkt_tab, and NLTK cannot download it on a machine without
general network access. The llama-index-core wheel on PyPI ships a copy; this fetches that
wheel (package registries are reachable) and unpacks the English tables into
`<sys.prefix>/nltk_data`, a place NLTK searches by default.

    python -m tunelab.tasks.nltk_data [--wheel PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_PACKAGE = "llama-index-core==0.14.25"
MEMBER_PREFIX = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"


def target_dir() -> Path:
    return Path(sys.prefix) / "nltk_data" / "tokenizers" / "punkt_tab" / "english"


def extract(wheel: Path, destination: Path) -> int:
    """Unpack the English punkt_tab tables from `wheel`; returns how many files were written."""
    destination.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(MEMBER_PREFIX) and not member.endswith("/"):
                (destination / Path(member).name).write_bytes(archive.read(member))
                written += 1
    if not written:
        raise RuntimeError(f"{wheel} holds no punkt_tab tables under {MEMBER_PREFIX}")
    return written


def download_wheel(directory: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(directory), WHEEL_PACKAGE],
        check=True,
    )
    wheels = sorted(directory.glob("llama_index_core-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download of {WHEEL_PACKAGE} produced no wheel")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a llama-index-core wheel already on disk")
    args = parser.parse_args(argv)
    destination = target_dir()
    if (destination / "sent_starters.txt").is_file():
        print(f"punkt_tab already present in {destination}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        count = extract(wheel, destination)
    print(f"unpacked {count} punkt_tab files into {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
