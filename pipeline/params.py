"""Compose params.yaml from conf/ exactly as `dvc exp run` does, and check it is not stale.

Plain `dvc repro` never composes params.yaml, so a stale file would silently run old settings:
`python -m pipeline.params --check` fails in that case (the tests and `make repro` run it).

    python -m pipeline.params                     # write params.yaml from conf/
    python -m pipeline.params model=resnet50      # with Hydra overrides
    python -m pipeline.params --check             # exit 1 if params.yaml differs from conf/
"""
from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

import yaml

from .atomic import atomic_path
from .errors import TvmqError, cli_main

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = "params.yaml"


def compose(root: Path = ROOT, overrides: list[str] | None = None) -> str:
    """The params.yaml text that DVC's Hydra integration writes for `overrides`."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / PARAMS_FILE
        try:
            compose_and_dump(out, str((root / "conf").resolve()), None, "config",
                             str(root / ".dvc" / "hydra_plugins"), list(overrides or []))
        except (HydraException, OmegaConfBaseException) as err:
            first = " ".join(str(err).split("Config search path")[0].split())
            raise TvmqError(
                f"cannot compose {root / 'conf'} with overrides {overrides or []}: {first}. "
                "Check the group/option names (ls conf/<group>/) and the override syntax."
            ) from None
        return out.read_text()


def load(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml (what every stage reads; stages never read conf/)."""
    path = Path(path)
    if not path.exists():
        raise TvmqError(f"{path} is missing: run `python -m pipeline.params` to compose it.")
    return yaml.safe_load(path.read_text())


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet50")
    parser.add_argument("--check", action="store_true", help="fail if params.yaml is stale")
    args = parser.parse_args(argv)
    text = compose(ROOT, args.overrides)
    target = ROOT / PARAMS_FILE
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                str(target), "composed from conf/"))
            print(f"{target} is stale; run `python -m pipeline.params` (or `dvc exp run`):\n{diff}",
                  file=sys.stderr)
            return 1
        print(f"{target} matches conf/")
        return 0
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
