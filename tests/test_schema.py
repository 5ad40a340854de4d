"""The profile schema: in step with the dataclasses it mirrors, and strict about types."""
import dataclasses
import doctest
import math
import re
from pathlib import Path

import pytest

from refacelib.pipeline import schema
from refacelib.pipeline.schema import PROFILE_SCHEMA, Spec, check

ROOT = Path(__file__).resolve().parents[1]


def test_phantom_keys_are_those_of_phantom_params():
    from refacelib.data.phantom import PhantomParams

    init_fields = {f.name for f in dataclasses.fields(PhantomParams) if f.init}
    assert set(PROFILE_SCHEMA.keys["phantom"].keys) == init_fields


def test_stage_keys_are_those_of_stage_config():
    from refacelib.diffusion.cascade import StageConfig

    for stage in ("stage1", "stage2"):
        assert set(PROFILE_SCHEMA.keys["cascade"].keys[stage].keys) == {f.name for f in dataclasses.fields(StageConfig)}


def test_choices_match_the_library():
    from refacelib.deface import methods as deface
    from refacelib.pipeline import refacing

    assert schema.DEFACE_METHODS == deface.METHODS
    assert PROFILE_SCHEMA.keys["cascade"].keys["stage2_coarse"].choices == refacing.STAGE2_COARSE


def _schema_paths(spec=PROFILE_SCHEMA, prefix=()):
    for key, sub in (spec.keys or {}).items():
        yield prefix + (key,)
        yield from _schema_paths(sub, prefix + (key,))


def test_every_key_the_code_reads_is_in_the_schema():
    known = set(_schema_paths())
    pattern = re.compile(r"params\[\"(\w+)\"\](?:\[\"(\w+)\"\]|\.get\(\"(\w+)\")?")
    read = set()
    for path in [*ROOT.glob("refacelib/*.py"), *ROOT.glob("notebooks/*.py")]:
        for m in pattern.finditer(path.read_text()):
            read.add(tuple(p for p in m.groups() if p))
    assert read, "no parameter reads found"
    assert sorted(read - known) == []


@pytest.mark.parametrize("value, spec, ok", [
    (3, Spec("int", low=1), True), (True, Spec("int"), False), (3.0, Spec("int"), False),
    (True, Spec("number"), False), (math.nan, Spec("number"), False), (math.inf, Spec("number", low=0), False),
    (0, Spec("number", low=0, low_open=True), False), (0, Spec("number", low=0), True),
    (None, Spec("number", nullable=True), True), (None, Spec("number"), False),
    ([1, 2], Spec("list", item=Spec("int"), length=2), True), ([1], Spec("list", item=Spec("int"), length=2), False),
    ([], Spec("list", item=Spec("int"), min_length=1), False), ("x", Spec("list", item=Spec("int")), False),
    ("ddim", Spec("str", choices=("ddim",)), True), (1, Spec("str"), False), ({}, Spec("map", keys={}), True),
])
def test_check_types_and_ranges(value, spec, ok):
    assert (check(value, spec, path="k") == []) is ok


def test_doctests():
    assert doctest.testmod(schema).failed == 0
