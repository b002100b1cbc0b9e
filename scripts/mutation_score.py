"""The mutation score per module from mutmut's results under mutants/ (written by scripts/mutation.sh).

Killed means a test failed (or timed out) on the mutant. The score is killed / checked; a mutant that no selected
test reaches ("no tests") counts as a survivor, never as killed, and unchecked ones (a run cut short) are reported.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255}  # a failing test, pytest's internal error, a timeout (mutmut's codes)
SURVIVED = {0, 5, 33}  # all tests passed, or no test reaches the mutant


def main(argv: list[str]) -> int:
    paths = [a for a in argv[1:] if not a.startswith("-")]
    root = Path(paths[0] if paths else "mutants") / "src"
    metas = sorted(root.glob("**/*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}; run: make mutation", file=sys.stderr)
        return 1
    print(f"{'module':40} {'mutants':>7} {'killed':>6} {'survived':>8} {'unchecked':>9} {'score':>6}")
    for meta in metas:
        module = str(meta.relative_to(root))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        kinds = Counter("killed" if c in KILLED else "survived" if c in SURVIVED else
                        "unchecked" if c is None else "other" for c in codes.values())
        checked = len(codes) - kinds["unchecked"]
        score = f"{100 * kinds['killed'] / checked:.1f}%" if checked else "-"
        print(f"{module:40} {len(codes):7} {kinds['killed']:6} {kinds['survived'] + kinds['other']:8} "
              f"{kinds['unchecked']:9} {score:>6}")
        for name, code in sorted(codes.items()):
            if code is not None and code not in KILLED and "-v" in argv:
                print(f"    survived ({code}): {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
