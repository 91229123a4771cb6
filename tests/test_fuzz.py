"""The bad-input promise, fuzzed: every malformed config, override, search space or data file
gets one line (``config error: <key>: ...``, ``space error: ...``), exit 2, no traceback, and
nothing is created: no MLflow store, no Optuna study, no job.

Two layers. A deterministic matrix walks the whole schema: every leaf gets every wrong value
its type admits (wrong types, NaN, infinities, numbers beyond 64 bits, mappings and lists
where scalars belong, unknown names for every registry), every section an unknown key, both
as an override and in the file. Then Hypothesis draws combinations the matrix does not make
(a leaf's wrong value in a file with a BOM and CRLF line ends, through ``run``, ``sweep`` or
``submit``), free-form overrides and YAML bytes: a bounded number by default (derandomized,
so a run is repeatable), many more with ``--fuzz-long``. What it found became the fixed
examples in ``FOUND`` below, checked every run.

Everything runs in-process through :func:`orchestrator.cli.main`, so one example costs
milliseconds: a refused input never gets as far as starting Ray or opening a store.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import io
import math
import typing
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.config import ExperimentConfig
from trainers.rules import Names, field_rule

from .conftest import CONFIGS

PREFIXES = ("config error: ", "space error: ")


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, typing.Any, dict]]:
    """(dotted key, type, metadata) of every leaf of the schema, optional sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
        if dataclasses.is_dataclass(inner):
            out += _leaves(inner, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", inner, dict(f.metadata)))
    return out


def _sections(cls: type, prefix: str = "") -> list[str]:
    out = [prefix.rstrip(".")] if prefix else []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        inner = args[0] if len(args) == 1 else hints[f.name]
        if dataclasses.is_dataclass(inner):
            out += _sections(inner, f"{prefix}{f.name}.")
    return out


LEAVES = _leaves(ExperimentConfig)
SECTIONS = _sections(ExperimentConfig)

HUGE = [str(10**30), str(2**64), "-" + str(10**30), str(10**400)]
"""Integers beyond 64 bits (the last beyond a float, too)."""


def wrong_values(hint: typing.Any, meta: dict) -> list[typing.Any]:
    """Values (as YAML data) that a field of this type must refuse."""
    containers: list[typing.Any] = [{"a": 1}, [1, 2]]
    if typing.get_origin(hint) is list:
        return [{"a": 1}, "abc", [[[1]]], [{"a": 1}]]
    if hint is bool:
        return [*containers, "maybe", 2, 0.5, "1"]
    if hint is int:
        return [*containers, "abc", 1.5, float("nan"), float("inf"), *map(int, HUGE)]
    if hint is float:
        return [*containers, "abc", float("nan"), float("inf"), float("-inf"), *map(int, HUGE)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        out = [*containers, "no_such_choice"]
        return out if issubclass(hint, enum.IntEnum) else [*out, 1]
    if hint is str:
        return [*containers, "no_such_name"] if isinstance(field_rule(meta), Names) else containers
    return containers


MATRIX = [(key, v) for key, hint, meta in LEAVES for v in wrong_values(hint, meta)]


def _text(value: typing.Any) -> str:
    """A value as the override's YAML text (NaN and the infinities as YAML spells them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _nested(dotted: str, value: typing.Any, base: dict) -> dict:
    """A copy of ``base`` with the dotted key set (sections made as needed)."""
    out = copy.deepcopy(base)
    *parents, name = dotted.split(".")
    node = out
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[name] = value
    return out


BASE = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())

SPACE = "objective: {metric: test_accuracy, direction: maximize}\nparams:\n  trainer.lr: {type: float, low: 0.01, high: 0.2}\n"


def refused(argv: list[str], where: Path, *names: str) -> str:
    """Runs the command in-process; asserts exit 2, one line with a known prefix naming one
    of ``names`` (when given), no traceback, and nothing new in ``where``."""
    before = {p.name for p in where.iterdir()}
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    text = err.getvalue().strip()
    lines = text.splitlines()
    assert code == 2, f"{argv}: exit {code}: {text[-800:]}"
    assert len(lines) == 1 and "Traceback" not in text, f"{argv}: {text[-800:]}"
    assert lines[0].startswith(PREFIXES), f"{argv}: {lines[0]}"
    if names:
        assert any(n in lines[0] for n in names), f"{argv}: {lines[0]} names none of {names}"
    created = {p.name for p in where.iterdir()} - before
    assert not created, f"{argv} created {created}"
    return lines[0]


@pytest.fixture()
def project(workdir):
    (workdir / "exp.yaml").write_text((CONFIGS / "quickstart.yaml").read_text())
    (workdir / "space.yaml").write_text(SPACE)
    return workdir


def _named(key: str) -> tuple[str, ...]:
    """What the line may name for a bad value at ``key``: the key, or its section (a wrong
    type for a whole section's field is reported there)."""
    return (key, key.rsplit(".", 1)[0]) if "." in key else (key,)


# -- the matrix --------------------------------------------------------------------------


def test_the_matrix_covers_the_whole_schema():
    assert len(LEAVES) > 150 and len(SECTIONS) > 15
    assert len(MATRIX) > 6 * len(LEAVES)


@pytest.mark.parametrize("chunk", range(4))
def test_every_leaf_refuses_every_wrong_value_as_an_override(project, chunk):
    for key, value in MATRIX[chunk::4]:
        refused(["show", "exp.yaml", f"{key}={_text(value)}"], project, *_named(key))


@pytest.mark.parametrize("chunk", range(4))
def test_every_leaf_refuses_every_wrong_value_in_the_file(project, chunk):
    bad = project / "bad.yaml"
    for key, value in MATRIX[chunk::4]:
        bad.write_text(yaml.safe_dump(_nested(key, value, BASE)))
        refused(["show", "bad.yaml"], project, *_named(key))


def test_every_section_refuses_an_unknown_key(project):
    for section in ["", *SECTIONS]:
        key = f"{section}.no_such_key" if section else "no_such_key"
        assert "unknown key" in refused(["show", "exp.yaml", f"{key}=1"], project, key)
        (project / "bad.yaml").write_text(yaml.safe_dump(_nested(key, 1, BASE)))
        assert "unknown key" in refused(["show", "bad.yaml"], project, key)


# What the fuzzing found on main, fixed, and kept as examples (override, key named).
FOUND = [
    ("trainer.lr=" + str(10**400), "trainer.lr"),  # a bare OverflowError from OmegaConf
    ("model.hidden={a: 1}", "model.hidden"),  # a bare TypeError: incompatible containers
    ("tracking.params=[[[1]]]", "tracking.params"),  # a nested list taken as a string
    ("tracking.enabled=2", "tracking.enabled"),  # OmegaConf reads 2 as true
    ("runtime.num_workers=" + str(2**64), "runtime.num_workers"),  # accepted
    ("runtime.gpus_per_worker=.inf", "runtime.gpus_per_worker"),  # passed ">= 0"
    ("sweep.cpus_per_trial=.inf", "sweep.cpus_per_trial"),  # passed "> 0"
    ("seed=" + str(2**63), "seed"),  # accepted; torch.manual_seed fails on it later
    ("trainer.lr=[1,", "trainer.lr"),  # a YAML parser traceback (issue 20's first report)
    ("data.path=${oc.env:HOME}", "data.path"),  # read the environment unasked
]


@pytest.mark.parametrize(("override", "key"), FOUND, ids=[k for _, k in FOUND])
@pytest.mark.parametrize("command", ["show", "run", "sweep", "submit"])
def test_what_the_fuzzing_found_stays_fixed(project, command, override, key):
    argv = [command, "exp.yaml", override]
    if command in ("sweep", "submit"):
        argv += ["--space", "space.yaml"]
    refused(argv, project, key)


# -- drawn by Hypothesis -----------------------------------------------------------------

_FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(
    case=st.sampled_from(MATRIX),
    command=st.sampled_from(["run", "sweep", "submit", "show"]),
    in_file=st.booleans(),
    bom=st.booleans(),
    crlf=st.booleans(),
)
@example(case=("trainer.lr", 10**400), command="run", in_file=True, bom=True, crlf=True)
def test_a_wrong_value_anywhere_is_refused_by_every_command(
    project, case, command, in_file, bom, crlf
):
    key, value = case
    if in_file:
        text = yaml.safe_dump(_nested(key, value, BASE))
        argv = [command, "bad.yaml"]
    else:
        text = yaml.safe_dump(BASE)
        argv = [command, "bad.yaml", f"{key}={_text(value)}"]
    if crlf:
        text = text.replace("\n", "\r\n")
    (project / "bad.yaml").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    if command in ("sweep", "submit"):
        argv += ["--space", "space.yaml"]
    refused(argv, project, *_named(key))


def test_a_bom_and_crlf_line_ends_change_nothing(project):
    plain = io.StringIO()
    with redirect_stdout(plain):
        assert main(["show", "exp.yaml"]) == 0
    text = (project / "exp.yaml").read_text().replace("\n", "\r\n")
    (project / "dos.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    dos = io.StringIO()
    with redirect_stdout(dos):
        assert main(["show", "dos.yaml"]) == 0
    assert dos.getvalue() == plain.getvalue()


_KEY = st.one_of(
    st.sampled_from([k for k, _, _ in LEAVES] + SECTIONS),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\[\]@-]{0,30}", fullmatch=True),
)
_VALUE = st.one_of(
    st.text(alphabet="[]{}'\",:!&*#|>%@`-?=.\\ 0123456789abcxyzE\t", max_size=24),
    st.text(max_size=12),
    st.sampled_from([".nan", ".inf", "-.inf", "1e400", str(10**400), "!!binary AAAA", "~"]),
)


@_FUZZ
@given(key=_KEY, value=_VALUE)
@example(key="seed", value="{a")
@example(key="trainer.lr", value="!!python/object/apply:os.system ['true']")
def test_any_override_is_taken_or_refused_in_one_line(project, key, value):
    """``show`` either prints the config (the override was fine) or refuses in one line:
    never a traceback or another exit code."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(["show", "exp.yaml", f"{key}={value}"])
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue().strip()
    if code == 0:
        assert not text, text
        return
    assert code == 2 and len(text.splitlines()) == 1, f"{key}={value}: exit {code}: {text}"
    assert text.startswith(PREFIXES) or "error: " in text, text
    assert "Traceback" not in text


@_FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
@example(data=b"\xff\xfe\x00garbage")
@example(data=b"seed: !!python/object/apply:os.system ['true']\n")
@example(data=b"trainer: {lr: [1,\n")
@example(data=b"- a\n- b\n")
@example(data=b"seed: &a [*a]\n")
def test_any_bytes_as_a_config_file_are_taken_or_refused_in_one_line(project, data):
    (project / "junk.yaml").write_bytes(data)
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["show", "junk.yaml"])
    text = err.getvalue().strip()
    if code == 0:
        return  # an empty or harmless mapping (a comment, "{}")
    assert code == 2 and len(text.splitlines()) == 1, f"{data!r}: exit {code}: {text}"
    assert text.startswith(PREFIXES) and "Traceback" not in text, text


# -- search spaces -----------------------------------------------------------------------

BAD_SPACES = [
    (
        "objective: {metric: test_accuracy, direction: sideways}\nparams: {trainer.lr: {type: float, low: 0.01, high: 0.2}}",
        "direction",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: floaty, low: 0.01, high: 0.2}}",
        "trainer.lr",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: 0.2, high: 0.01}}",
        "trainer.lr",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: .nan, high: 0.2}}",
        "trainer.lr",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: 0.01, high: .inf}}",
        "trainer.lr",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: int, low: 1, high: "
        + str(10**30)
        + "}}",
        "trainer.lr",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.no_such: {type: float, low: 0.01, high: 0.2}}",
        "trainer.no_such",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.optimizer: {type: categorical, choices: []}}",
        "trainer.optimizer",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.optimizer: {type: categorical, choices: [sgd, nope]}}",
        "trainer.optimizer",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: 0.01, high: 0.2}}\nsampler: {name: nope}",
        "sampler",
    ),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: 0.01, high: 0.2}}\npruner: {name: nope}",
        "pruner",
    ),
    ("objective: {metric: test_accuracy}\nparams: {}", "params"),
    ("params: {trainer.lr: {type: float, low: 0.01, high: 0.2}}", "objective"),
    (
        "objective: {metric: test_accuracy}\nparams: {trainer.lr: {type: float, low: 0.01, high: 0.2}}\nbogus: 1",
        "bogus",
    ),
    ("objective: [\n", "space"),
    ("- 1\n- 2\n", "space"),
    (
        "\ufeffobjective: {metric: test_accuracy}\r\nparams: {trainer.lr: {type: float, low: 0.2, high: 0.01}}\r\n",
        "trainer.lr",
    ),
]


@pytest.mark.parametrize(("text", "named"), BAD_SPACES, ids=range(len(BAD_SPACES)))
@pytest.mark.parametrize("command", ["sweep", "submit"])
def test_a_bad_space_is_refused_in_one_line(project, command, text, named):
    (project / "bad_space.yaml").write_text(text, encoding="utf-8")
    line = refused([command, "exp.yaml", "--space", "bad_space.yaml"], project)
    assert line.startswith("space error: "), line
    assert named in line or "bad_space.yaml" in line, line


# -- data files --------------------------------------------------------------------------


def _table(n: int = 60, **columns: object) -> pa.Table:
    rng = np.random.default_rng(0)
    base: dict[str, object] = {
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "label": np.arange(n) % 3,
    }
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


def _nan_at(values: np.ndarray, value: float) -> np.ndarray:
    out = values.copy()
    out[5] = value
    return out


_NORMAL = np.random.default_rng(1).normal(size=60)
BAD_DATA = {
    "no label column": (_table(label=None), "data.label"),
    "a text feature named": (_table(a=[f"x{i}" for i in range(60)]), "data.features"),
    "a NaN feature": (_table(a=_nan_at(_NORMAL, float("nan"))), "data.features"),
    "an infinite feature": (_table(a=_nan_at(_NORMAL, float("inf"))), "data.features"),
    "a feature beyond float32": (_table(a=_nan_at(_NORMAL, 1e39)), "data.features"),
    "a missing feature": (_table(a=pa.array([None] + [1.0] * 59)), "data.features"),
    "a NaN label": (_table(label=_nan_at(np.arange(60.0) % 3, float("nan"))), "data.label"),
    "a missing label": (_table(label=pa.array([None] + [1] * 59)), "data.label"),
    "list labels": (_table(label=pa.array([[i % 3] for i in range(60)])), "data.label"),
    "fractional labels": (_table(label=np.linspace(0, 1, 60)), "data.label"),
    "one class": (_table(label=np.zeros(60, dtype=int)), "data.label"),
    "empty": (_table(n=0), "data.path"),
    "tiny": (_table(n=3), "data.path"),
    "no feature columns": (pa.table({"label": np.arange(60) % 3}), "data.features"),
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
@pytest.mark.parametrize("command", ["run", "sweep", "submit"])
def test_a_bad_data_file_is_refused_in_one_line_naming_it(project, command, case):
    table, key = BAD_DATA[case]
    pq.write_table(table, project / "data.parquet")
    argv = [command, "exp.yaml", "data.name=parquet", "data.path=data.parquet"]
    if "named" in case:  # unnamed, a text column is simply not a feature
        argv.append("data.features=[a,b]")
    if command in ("sweep", "submit"):
        argv += ["--space", "space.yaml"]
    refused(argv, project, key)


@pytest.mark.parametrize("command", ["show", "run", "sweep", "submit"])
def test_a_data_file_that_is_missing_or_not_parquet_is_refused(project, command):
    extra = ["--space", "space.yaml"] if command in ("sweep", "submit") else []
    refused(
        [command, "exp.yaml", "data.name=parquet", "data.path=none.parquet", *extra],
        project,
        "data.path",
    )
    if command != "show":  # show reads the config, not the data
        (project / "junk.parquet").write_bytes(b"PAR1 not really")
        refused(
            [command, "exp.yaml", "data.name=parquet", "data.path=junk.parquet", *extra],
            project,
            "data.path",
        )
