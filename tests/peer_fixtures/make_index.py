"""Write ``INDEX.json``: every peer fixture case at a glance (standard library only; any python).

    python tests/peer_fixtures/make_index.py

Per case, from its ``case.json``: library, method, whether the peer made it (or its error), the
versions that made it, the base, the output compared, the adapters, a config summary, each saved
file with its size and each weight file's tensor keys with their shapes, and the reload and effect
checks. For an importer's author: which case exercises what, without opening the folders.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARIES = ("peft", "adapters")


def entry(case_json: Path) -> dict:
    case = json.loads(case_json.read_text())
    found = {
        "path": str(case_json.parent.relative_to(HERE)),
        "library": case["library"],
        "method": case["method"],
        "made": case["made"],
        "versions": {k: v for k, v in case["versions"].items() if k in ("transformers", case["library"])},
    }
    if not case["made"]:
        return {**found, "error": case["error"]}
    files = case["adapter_files"]
    return {
        **found,
        "base": f"_bases/{case['base']}",
        "peer_class": case["peer_class"],
        "adapters": case["adapters"],
        "output": case["output"],
        "summary": case["summary"],
        "files": files["files"],
        "tensors": {name: {key: shape for key, (shape, _dtype) in keys.items()} for name, keys in files["tensors"].items()},
        "reference": case["reference"],
        "reload_max_abs_diff": case["reload_max_abs_diff"],
        "effect_max_abs_diff": case["effect_max_abs_diff"],
    }


def main() -> None:
    cases = [entry(path) for library in LIBRARIES for path in sorted((HERE / library).glob("*/case.json"))]
    index = {
        "about": "peer fixtures: adapter folders saved by peft and AdapterHub themselves; see README.md",
        "made": sum(case["made"] for case in cases),
        "refused": sum(not case["made"] for case in cases),
        "cases": cases,
    }
    fd, tmp = tempfile.mkstemp(prefix=".INDEX.", dir=HERE)
    with os.fdopen(fd, "w") as handle:
        json.dump(index, handle, indent=1)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, HERE / "INDEX.json")
    print(f"wrote {HERE / 'INDEX.json'}: {index['made']} cases made, {index['refused']} refused by the peer")


if __name__ == "__main__":
    main()
