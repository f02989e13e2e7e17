"""The command line fails fast and speaks its own language (issue 16): names are checked before torch
is imported, the closest valid name is suggested, flags are never abbreviated silently, list options
take the forms people write, ``--help`` shows defaults, and errors name flags, not Python keywords.

Subprocess tests run ``adapterkit.cli.main`` in a fresh interpreter to see what it imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import run_cli

import adapterkit
from adapterkit.cli import manifest
from adapterkit.cli.describe import build_manifest
from adapterkit.cli.names import method_options
from adapterkit.registry import REGISTRY, make_config

SRC = Path(__file__).resolve().parents[1] / "src"

_PROBE = """import json, sys, time
start = time.perf_counter()
from adapterkit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "imported": [m for m in ("torch", "transformers", "numpy") if m in sys.modules]}), file=sys.stderr)
"""


def run_fresh(*argv: str) -> tuple[dict, str, str]:
    """(probe result, stdout, stderr without the probe line) of ``adapterkit *argv`` in a new interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    *err, probe = done.stderr.strip().splitlines()
    return json.loads(probe), done.stdout, "\n".join(err)


# ---------------------------------------------------------------- fast failure, no torch
def test_an_unknown_method_fails_in_under_a_second_without_importing_torch():
    probe, _, err = run_fresh("train", "--method", "pfeifer", "--task", "rotten_tomatoes")
    assert probe["code"] == 2
    assert "unknown method 'pfeifer'; did you mean pfeiffer?" in err
    assert "torch" not in probe["imported"] and "transformers" not in probe["imported"]
    assert probe["seconds"] < 1.0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["methods"], "houlsby (default learning rate 0.001)"),
        (["methods", "lora"], "--option targets=...: a list"),
        (["tasks"], "rotten_tomatoes"),
        (["models"], "minilm"),
        (["train", "--help"], "(default: 32)"),
        (["train", "--method", "houlsby", "--option", "reduction_factr=8", "--task", "trec6"], "did you mean reduction_factor?"),
        (["train", "--method", "houlsby", "--task", "rotten_tomatos"], "did you mean rotten_tomatoes?"),
    ],
)
def test_listings_and_name_checks_do_not_import_torch(argv, expected):
    probe, out, err = run_fresh(*argv)
    assert expected in " ".join((out + err).split())
    assert "torch" not in probe["imported"] and "transformers" not in probe["imported"]


def test_the_manifest_equals_the_registry_and_the_task_catalog():
    """manifest.py is what the CLI knows without torch; regenerate it with `python -m adapterkit.cli.describe`."""
    built = build_manifest()
    assert built["TASKS"] == manifest.TASKS, "tasks changed: run python -m adapterkit.cli.describe"
    assert built["METHODS"] == manifest.METHODS, "methods or options changed: run python -m adapterkit.cli.describe"
    assert set(manifest.METHODS) == set(REGISTRY)


def test_every_option_has_a_meaning():
    missing = [(m, o["name"]) for m, entry in manifest.METHODS.items() for o in entry["options"] if not o["meaning"]]
    assert missing == []


@pytest.mark.parametrize("method", [m for m, spec in sorted(REGISTRY.items()) if spec.config_cls.option_values])
def test_declared_option_values_are_exactly_what_validate_accepts(method):
    config_cls = REGISTRY[method].config_cls
    required = {"adapters": ("a", "b")} if method in ("fusion", "k_task") else {}
    for name, values in config_cls.option_values.items():
        listed = "tuple" in str(config_cls.__dataclass_fields__[name].type)
        apart = {"targets": "input_targets", "input_targets": "targets"}.get(name) if method == "ia3" else None
        others = {**required, **({apart: ()} if apart else {})}  # ia3 refuses a role in both
        for value in values:
            make_config(method, **others, **{name: (value,) if listed else value})
        with pytest.raises(ValueError):
            make_config(method, **others, **{name: ("no_such_value",) if listed else "no_such_value"})


# ---------------------------------------------------------------- suggestions, no abbreviations
@pytest.mark.parametrize(
    "argv, message",
    [
        (["trian", "--method", "lora"], "invalid choice: 'trian'; did you mean train?"),
        (["train", "--method", "lora", "--task", "trec6", "--epoch", "3"], "unrecognized arguments: --epoch 3; did you mean --epochs?"),
        (["train", "--method", "lora", "--task", "trec6", "--text-col", "x"], "did you mean --text-column?"),
        (["train", "--method", "lora", "--task", "trec6", "--mixed-precision", "bf61"], "did you mean bf16?"),
        (["train", "--method", "pfeifer", "--task", "trec6"], "unknown method 'pfeifer'; did you mean pfeiffer?"),
        (["train", "--method", "pfeiffer", "--task", "trec6", "--option", "reduction_factr=8"],
         "has no option(s) reduction_factr; did you mean reduction_factor?"),
        (["train", "--method", "pfeiffer", "--task", "trec6", "--option", "non_linearity=gleu"],
         "'gleu' is not one of relu, gelu, silu, swish, tanh; did you mean gelu?"),
        (["train", "--method", "pfeiffer", "--task", "rotten_tomatos"], "unknown task 'rotten_tomatos'; did you mean rotten_tomatoes?"),
        (["eval", "--adapter", "x", "--task", "trec7"], "unknown task 'trec7'; did you mean trec6?"),
        (["methods", "lorra"], "unknown method 'lorra'; did you mean lora?"),
        (["train", "--method", "lora", "--task", "trec6", "--option", "layers=x"], "layers=4,5 or layers=[4,5]"),
        (["train", "--method", "union", "--task", "trec6", "--option", "configs=lora"], 'configs=[{"method": "lora"'),
    ],
)
def test_a_misspelt_name_exits_2_naming_the_closest(argv, message):
    code, out, err = run_cli(*argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_flags_are_never_abbreviated(tmp_path):
    # --epoch would have been read as --epochs, --out as --output-dir
    for flag in ("--epoch", "--out", "--batch"):
        code, _, err = run_cli("train", "--method", "lora", "--task", "trec6", flag, "1")
        assert code == 2 and f"unrecognized arguments: {flag} 1" in err


# ---------------------------------------------------------------- list options
@pytest.mark.parametrize("written", ["[q,v]", "q,v", "(q, v)", ["q", "v"]])
def test_list_options_take_the_forms_people_write(written):
    options = method_options("lora", [("targets", written)])
    assert options == {"targets": ("q", "v")}
    assert make_config("lora", **options).targets == ("q", "v")


def test_a_single_item_and_integer_lists():
    assert method_options("lora", [("targets", "q")]) == {"targets": ("q",)}
    assert method_options("lora", [("layers", 4)]) == {"layers": (4,)}
    assert method_options("lora", [("layers", "4,5")]) == {"layers": (4, 5)}
    assert method_options("lora", [("layers", None)]) == {"layers": None}


def test_train_accepts_a_bracketed_list_on_the_command_line():
    code, _, err = run_cli("train", "--method", "lora", "--option", "targets=[q,v]", "--task", "no_such_task")
    assert code == 2 and "unknown task" in err  # the option passed; the task is what fails


def test_a_union_is_written_as_a_json_list_of_configs():
    written = '[{"method": "lora", "r": 4}, {"method": "pfeiffer", "reduction_factor": 32}]'
    options = method_options("union", [("configs", json.loads(written))])
    config = make_config("union", **options)
    assert [c.method for c in config.configs] == ["lora", "pfeiffer"]


# ---------------------------------------------------------------- help, version, listings
def test_train_help_shows_every_default():
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    for shown in ("(default: 3)", "(default: 32)", "(default: 0.01)", "(default: 0.06)", "(default: minilm)", "(default: no)"):
        assert shown in " ".join(out.split()), shown


@pytest.mark.parametrize("command, words", [("methods", "NAME = DEFAULT"), ("tasks", "--describe loads each")])
def test_methods_and_tasks_help_have_descriptions(command, words):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and words in " ".join(out.split())


def test_version():
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"adapterkit {adapterkit.__version__}"


def test_methods_shows_meaning_type_default_values_and_how_to_write_a_union():
    code, out, _ = run_cli("methods")
    assert code == 0
    assert "non_linearity = relu  (str: relu, gelu, silu, swish, tanh)  relu, gelu, silu/swish or tanh." in out
    assert "targets = [q,v]  (tuple[str, ...]: q, k, v" in out
    assert '--option \'configs=[{"method": "lora", "r": 4}' in out
    code, out, _ = run_cli("methods", "prompt")
    assert "init = vocab" in out and "--option init=...: one of random, vocab, text" in out


# ---------------------------------------------------------------- README claims the code must keep
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readmes_mam_at_houlsbys_budget_trains_about_what_houlsby_trains():
    """The README's MAM example, built on a random model of minilm's shape (6 layers, width 384; the
    adapters do not depend on the vocabulary), trains within 10% of a Houlsby adapter."""
    import re

    import torch
    from transformers import BertConfig, BertModel

    from adapterkit import AdapterModel
    from adapterkit.cli.common import parse_option

    lines = README.splitlines()
    example = next(a + b for a, b in zip(lines, lines[1:]) if "--method mam" in a and "Houlsby's budget" in b)
    pairs = [parse_option(text) for text in re.findall(r"--option (\S+)", example)]
    torch.manual_seed(0)
    shape = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, vocab_size=64)
    model = AdapterModel(BertModel(shape))
    model.add_adapter("mam", make_config("mam", **method_options("mam", pairs)))
    model.add_adapter("houlsby", make_config("houlsby"))
    mam, houlsby = model.count_parameters("mam")[0], model.count_parameters("houlsby")[0]
    assert abs(mam / houlsby - 1) < 0.1, (mam, houlsby)
    assert f"{mam // 1000}K trained on minilm (houlsby: {houlsby // 1000}K)" in example


def test_the_readme_states_prompt_tunings_default_initialisation():
    from adapterkit.methods.prompt import PromptConfig

    assert f"The default is `init={PromptConfig().init}`" in " ".join(README.split())
    assert PromptConfig().init == "vocab"  # Lester et al.'s runner-up, which every head can use
