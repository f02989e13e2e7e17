"""Make the peer fixtures: adapter folders saved by peft and AdapterHub themselves, with the peer's
own outputs, for adapterkit's importer tests and benchmark. Run inside a peer environment
(``make peer-fixtures`` builds them and runs this in each):

    python tests/peer_fixtures/make_fixtures.py bases                # _bases/ (transformers 5)
    python tests/peer_fixtures/make_fixtures.py peft [CASE ...]      # peft/<case>/
    python tests/peer_fixtures/make_fixtures.py adapters [CASE ...]  # adapters/<case>/

A library run makes the cases whose transformers major version is the environment's and skips the
others. Per case: build it with the peer, move every adapter weight with seeded noise, compute the
reference output, check the adapter changes it, save the folder with the peer's own save call,
reload it with the peer into a fresh base and check the reload reproduces the reference exactly,
then move the finished case folder into place. A case the peer is expected to refuse gets a
``case.json`` with the peer's error instead (and fails the run if the peer accepts it).
"""

from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # peft writes target_modules from a set, in string-hash order: fix the hash so reruns match
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach a hub

import argparse
import hashlib
import importlib
import logging
import shutil
import zlib
from pathlib import Path

import torch
import transformers

from fixture_kit import (
    BASES, HERE, NOISE_STD, atomic_directory, base_file, check_effect, check_reload, save_bases, transformers_major,
    versions, write_case_files, write_refusal,
)

#: library name -> the module holding its cases (LIBRARY, PACKAGES, CASES, build).
LIBRARIES = {"peft": "peft_cases", "adapters": "adapters_cases"}


def case_seed(library: str, name: str) -> int:
    """A seed per case that does not depend on which other cases run, or in which order."""
    return zlib.crc32(f"{library}/{name}".encode())


def make_case(library, case) -> None:
    seed = case_seed(library.LIBRARY, case.seed_name)
    record = {
        "library": library.LIBRARY,
        "case": case.name,
        "method": case.method,
        "versions": versions(*library.PACKAGES),
        "seed": seed,
        "noise_std": NOISE_STD,
    }
    target = HERE / library.LIBRARY / case.name
    try:
        made = library.build(case, seed)
    except Exception as error:
        if not case.refused:
            raise
        write_refusal(target, error, record)
        return
    if case.refused:
        raise AssertionError(f"{library.LIBRARY}/{case.name}: expected the peer to refuse this case; it made it")
    record.update(made.record, inputs=sorted(made.inputs))
    record["base_sha256"] = sha256(base_file(made.record["base"]))
    record["effect_max_abs_diff"] = check_effect(made.outputs, made.without)
    with atomic_directory(target) as folder:
        made.save(folder / "adapter")
        record["reload_max_abs_diff"] = check_reload(made.outputs, made.reload(folder / "adapter"))
        write_case_files(folder, made, record)
    print(f"made {target.relative_to(HERE)}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remove_stale(folder: Path, known: set[str]) -> None:
    """Remove case folders no case makes any more (renamed or dropped), and leftovers of a killed run."""
    for path in sorted(folder.glob("*")) + sorted(folder.glob(".*")):
        if path.is_dir() and path.name not in known:
            shutil.rmtree(path)
            print(f"removed stale {path.relative_to(HERE)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["bases", *LIBRARIES])
    parser.add_argument("cases", nargs="*", help="only these cases (default: all that run here)")
    args = parser.parse_args(argv)
    os.chdir(HERE)  # the bases are named by paths relative to this folder (see fixture_kit.load_base)
    torch.set_num_threads(1)  # one reduction order, so a rerun writes the same numbers
    transformers.logging.set_verbosity_error()  # fresh heads are expected: no "newly initialized" report
    logging.getLogger("adapters").setLevel(logging.ERROR)  # "adapters available but none are activated", per call
    transformers.utils.logging.disable_progress_bar()
    if args.what == "bases":
        if transformers_major() != 5:
            parser.error("save the bases with transformers 5 (adapterkit's): run this in .peer-envs/peft")
        save_bases()
        return
    if not BASES.is_dir():
        parser.error(f"no bases in {BASES}: run '{parser.prog} bases' in the transformers 5 environment first")
    library = importlib.import_module(LIBRARIES[args.what])
    known = {case.name for case in library.CASES}
    if set(args.cases) - known:
        parser.error(f"unknown {args.what} cases {sorted(set(args.cases) - known)}; known: {sorted(known)}")
    if not args.cases:
        remove_stale(HERE / library.LIBRARY, known)
    major = transformers_major()
    for case in library.CASES:
        if args.cases and case.name not in args.cases:
            continue
        if case.transformers != major:
            print(f"skipped {args.what}/{case.name}: runs on transformers {case.transformers}, not {major}")
            continue
        make_case(library, case)


if __name__ == "__main__":
    main()
