"""The training-recipe comparison on the validation split (refacelib.ablation), without training."""
import pandas as pd
import pytest

from refacelib import ablation
from refacelib.diffusion import cascade
from refacelib.pipeline import book as pipeline
from refacelib.pipeline import config, refacing, stages
from refacelib.pipeline.config import ConfigError


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.mark.parametrize("profile", ["tiny", "quick", "paper"])
def test_every_variant_is_a_valid_profile_that_changes_the_cascade_only(profile, runs_root):
    run = config.open_run(profile, "phantom", create=False)
    table = ablation.variants(run.params)
    assert list(table)[0] == "base recipe" and table["base recipe"] == {}
    hashes = set()
    for name, overrides in table.items():
        v = ablation.variant_run(run, overrides)
        assert v.folder == run.folder  # same cohort, same defaced images, same artifacts folder
        assert {k: v.params[k] for k in v.params if k != "cascade"} == {k: run.params[k] for k in run.params
                                                                          if k != "cascade"}
        for dotted, value in overrides.items():
            node = v.params
            for part in dotted.split("."):
                node = node[part]
            assert node == value
        cfg = cascade.CascadeConfig.from_dict({"stage1": v.params["cascade"]["stage1"],
                                               "stage2": v.params["cascade"]["stage2"]})
        hashes.add(refacing._checkpoint_folder(v, cfg, "data").name)
    # every recipe trains into its own checkpoint folder
    assert len(hashes) == len(table)
    assert run.params == config.open_run(profile, "phantom", create=False).params  # the run is not changed


def test_variant_run_refuses_anything_but_the_cascade(runs_root):
    run = config.open_run("tiny", "phantom", create=False)
    with pytest.raises(ValueError, match="cascade"):
        ablation.variant_run(run, {"phantom.face_coupling": 0.0})
    with pytest.raises(ConfigError):
        ablation.variant_run(run, {"cascade.stage1.steps": "many"})


def test_variant_keeps_the_defacing_stage(runs_root):
    """A variant must not redo (or miss) the cohort's defacing: its stage key does not see the cascade."""
    run = config.open_run("tiny", "phantom", create=False)

    class _Ds:
        class root:
            name = "phantom-x"
        ids = ["sub-01"]

    v = ablation.variant_run(run, next(v for k, v in ablation.variants(run.params).items() if k.startswith("4x steps")))
    assert stages._stage_folder(v, _Ds) == stages._stage_folder(run, _Ds)


def _table(checkpoints, gains, generic=None):
    """gains: person-specific (mean of samples - swap check); generic: mean of samples - average face."""
    return pd.DataFrame({"variant": [f"v{i}" for i in range(len(checkpoints))], "checkpoint": checkpoints,
                         "refaced_mean_minus_swapped_mm": gains, "selected": False,
                         "refaced_mean_minus_average_mm": generic if generic is not None else gains})


def test_table_applies_only_to_the_checkpoint_it_trained(runs_root, tmp_path):
    run = config.open_run("tiny", "phantom")
    root = tmp_path / "shipped"
    root.mkdir()
    assert ablation.table_for_run(run, "cascade-a", root=root) is None
    _table(["cascade-a", "cascade-b"], [0.1, -0.2]).to_csv(ablation.shipped_table("tiny", root=root), index=False)
    assert ablation.table_for_run(run, "cascade-a", root=root) is not None
    assert ablation.table_for_run(run, "cascade-z", root=root) is None  # other data or configuration
    # the run's own table comes first
    _table(["cascade-z"], [0.0]).to_csv(run.tables / "ablation.csv", index=False)
    assert list(ablation.table_for_run(run, "cascade-z", root=root)["checkpoint"]) == ["cascade-z"]


def test_select_takes_the_largest_person_specific_gain_and_the_first_on_ties():
    assert ablation.select(_table(["a", "b", "c"], [0.0, -0.3, -0.1])) == "v1"
    assert ablation.select(_table(["a", "b"], [-0.2, -0.2])) == "v0"
    # a recipe that beats the average face for everybody (the swap check gains as much) is not chosen
    assert ablation.select(_table(["a", "b"], [-0.1, 0.0], generic=[-0.1, -0.9])) == "v0"


def test_summarise_pairs_by_subject_and_method():
    rows = []
    for sid, avg, mean in (("a", 2.0, 1.0), ("b", 2.0, 2.5), ("c", 1.0, 0.5)):
        for method in ("m1", "m2"):
            rows += [{"subject": sid, "method": method, "candidate": "average", "msd_mm": avg},
                     {"subject": sid, "method": method, "candidate": "refaced_mean", "msd_mm": mean}]
    s = ablation.summarise(pd.DataFrame(rows))
    assert s["refaced_mean_minus_average_mm"] == pytest.approx(-0.5)
    assert s["refaced_mean_closer"] == pytest.approx(4 / 6)
    assert "swapped_minus_average_mm" not in s and "refaced_mean_minus_swapped_mm" not in s
    swap = [{"subject": sid, "method": m, "candidate": "swapped", "msd_mm": v}
            for sid, v in (("a", 1.5), ("b", 2.0), ("c", 0.5)) for m in ("m1", "m2")]
    s = ablation.summarise(pd.DataFrame(rows + swap))
    assert s["refaced_mean_minus_swapped_mm"] == pytest.approx(0.0)  # diffs -0.5, 0.5, 0.0
    assert s["refaced_mean_closer_than_swapped"] == pytest.approx(2 / 6)


def test_shipped_ablation_table_enters_the_training_chapters_cache_key(runs_root, tmp_path, monkeypatch):
    run = config.open_run("tiny", "phantom")
    monkeypatch.setattr(pipeline, "project_root", lambda: tmp_path)
    paths = pipeline.chapter_input_paths(run, "04_training")
    assert paths["project:checkpoints/ablation-tiny.csv"] == tmp_path / "checkpoints" / "ablation-tiny.csv"
    before = pipeline._inputs_digest(run, "04_training")
    (tmp_path / "checkpoints").mkdir()
    _table(["cascade-a"], [0.0]).to_csv(tmp_path / "checkpoints" / "ablation-tiny.csv", index=False)
    assert pipeline._inputs_digest(run, "04_training") != before


def test_recipe_ids_separate_prior_and_permutation_but_not_data(runs_root):
    """The controls table keeps a coupling only when its cascade was trained like the book's: the recipe id
    changes with the prior and the face shuffling, not with the phantom's coupling; old checkpoints keep
    their keys (average prior, no shuffling)."""
    from refacelib import controls

    run = config.open_run("tiny", "phantom", create=False)
    cfg = cascade.CascadeConfig.from_dict({"stage1": run.params["cascade"]["stage1"],
                                           "stage2": run.params["cascade"]["stage2"]})
    average = ablation.variant_run(run, {"cascade.prior": "average"})
    assert "prior" not in refacing.training_recipe(average)
    ridge = ablation.variant_run(run, {"cascade.prior": "ridge"})
    perm = controls.permutation_run(ridge)
    assert perm.params["cascade"]["shuffle_faces"] is True and refacing.training_recipe(perm)["shuffle_faces"]
    ids = {refacing.recipe_id(r) for r in (average, ridge, perm)}
    assert len(ids) == 3
    folders = {refacing._checkpoint_folder(r, cfg, "data").name for r in (average, ridge, perm)}
    assert len(folders) == 3
    null = controls.control_run("tiny", 0.0)
    assert refacing.recipe_id(null) == refacing.recipe_id(run)  # another coupling, the same recipe
