"""Smoke run of every chapter on the tiny profile, through papermill, into HTML."""
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from refacelib.data import privacy
from refacelib.pipeline import book as pipeline
from refacelib.pipeline import browser

ROOT = Path(__file__).resolve().parents[1]
# the BIDS test builds the tiny book twice, and the first test also builds it (module fixture)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project's book sources with its own run root."""
    base = tmp_path_factory.mktemp("project")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, base / name)
    for name in ("book", "notebooks", "params"):
        shutil.copytree(ROOT / name, base / name)
    old = {k: os.environ.get(k) for k in ("REFACE_PROJECT_ROOT", "REFACE_RUNS_ROOT")}
    os.environ["REFACE_PROJECT_ROOT"] = str(base)
    os.environ["REFACE_RUNS_ROOT"] = str(base / "runs")
    yield base
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_book(project):
    log = []
    index = pipeline.build_book("tiny", "phantom", log=log.append)
    return index, log


def _html_text(path):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text()))


def _private_paths(folder, *needles):
    hits = []
    for path in folder.rglob("*"):
        if path.suffix in (".html", ".ipynb") and path.is_file():
            text = path.read_text(errors="ignore")
            hits += [f"{path.name}: {n}" for n in needles if n in text]
    return hits


def test_tiny_book_builds_with_real_figures_and_tables(tiny_book, project):
    index, log = tiny_book
    run = index.parents[1]
    assert index.exists() and (run / "html" / "chapters" / "01_cohort.html").exists()
    for name in ("cohort_demographics.png", "cohort_montage.png", "deface_regions.png", "deface_qc.png",
                 "deface_example_slices.png", "deface_example_render.png"):
        assert (run / "figures" / name).stat().st_size > 10_000
    participants = pd.read_csv(run / "tables" / "participants.csv")
    summary = pd.read_csv(run / "tables" / "participants_summary.csv")
    assert summary["n"].sum() == len(participants) == 16
    methods = pd.read_csv(run / "tables" / "deface_methods.csv")
    assert list(methods.columns[:4]) == ["method", "engine", "version", "emulated"] and len(methods) == 5
    qc = pd.read_csv(run / "tables" / "deface_qc.csv")
    assert len(qc) == 5 * len(participants) and qc["passed"].all()
    assert (qc.loc[qc["method"] != "skullstrip", "brain_voxels_removed"] == 0).all()
    corr = pd.read_csv(run / "tables" / "muscle_corr.csv")
    assert list(corr.columns) == ["muscle", "image", "n", "mean", "ci_low", "ci_high", "significant"]
    assert len(corr) == 3 * 6 and (corr["n"] == len(participants)).all()
    diff = pd.read_csv(run / "tables" / "muscle_diff.csv")
    assert list(diff.columns) == ["muscle", "image", "diff_mean", "ci_low", "ci_high", "wilcoxon_p"]
    assert (run / "figures" / "muscle_correlations.png").exists()
    msd = pd.read_csv(run / "tables" / "face_msd.csv")
    assert list(msd.columns) == ["subject", "test_set", "method", "candidate", "msd_mm", "offset_mm", "skin_intensity"]
    assert msd.loc[msd["candidate"] == "oracle", "offset_mm"].abs().median() < 0.5  # the oracle sits on the skin
    # the oracle's skin is the true skin's brightness; a defaced face has (almost) none in the band
    skin = msd.groupby("candidate")["skin_intensity"].median()
    assert skin["oracle"] == pytest.approx(1.0, abs=0.15) and skin["defaced"] < 0.5
    # the profiles' cascade refines a linear prior, measured as its own candidate
    candidates = {"refaced", "refaced_mean", "linear", "linear_permuted", "average", "template_average", "defaced",
                  "swapped", "oracle"}
    assert set(msd["candidate"]) == candidates
    assert len(msd) == 5 * len(candidates) * (summary.set_index("split")["n"].filter(like="test").sum())
    tests = pd.read_csv(run / "tables" / "face_tests.csv")
    assert {"method", "test_set", "estimator", "baseline", "n", "p_holm", "rbc", "hl_diff_mm", "ci_low_mm",
            "ci_high_mm"} <= set(tests.columns)
    assert set(tests["baseline"]) == {"average", "template_average", "swapped", "linear", "linear_permuted"}
    floor = pd.read_csv(run / "tables" / "face_floor.csv")
    assert len(floor) == len(msd["subject"].unique()) and (floor["msd_mm"] > 0).all()
    # a perfect model on the cascade's grid (the original through the refacing path) beats the matched average
    grid = pd.read_csv(run / "tables" / "face_grid_ceiling.csv")
    assert len(grid) == 5 * msd["test_set"].nunique() and (grid["grid_ceiling"] < grid["average"]).all()
    reid = pd.read_csv(run / "tables" / "reid.csv")
    assert list(reid.columns) == ["method", "test_set", "candidate", "n", "top1", "top5"]
    timings = pd.read_csv(run / "tables" / "timings.csv")
    assert list(timings.columns) == ["step", "device", "seconds"] and "train stage 2" in set(timings["step"])
    for name in ("training_loss.png", "face_renderings.png", "face_msd_distributions.png", "face_bland_altman.png",
                 "reid_cmc.png", "face_distance_refaced.png", "face_paired_differences.png"):
        assert (run / "figures" / name).stat().st_size > 5_000, name
    intro = _html_text(run / "html" / "book" / "intro.html")
    assert f"phantom run here has {len(participants)} simulated participants" in intro
    chapter = _html_text(run / "html" / "chapters" / "01_cohort.html")
    assert "phantom cohort, a simulation" in chapter
    assert _private_paths(run / "html", str(project), str(ROOT)) == []
    assert _private_paths(run / "notebooks", str(project), str(ROOT)) == []


def test_book_reads_in_headless_chromium(tiny_book):
    """Every page opens, every figure loads as an image, no internal link is broken; screenshots kept."""
    chromium, reason = browser.install_chromium()
    if chromium is None:
        if os.environ.get("CI"):  # CI must run the browser checks, not skip them
            pytest.fail(f"headless Chromium unavailable under CI: {reason}")
        pytest.skip(f"headless Chromium unavailable: {reason}")
    index, _ = tiny_book
    run = index.parents[1]
    results = browser.check_book(run / "html", screenshots=run / "screenshots", chromium=chromium)
    pages = {r.page: r for r in results}
    assert {"index.html", "book/intro.html", *(f"chapters/{n}.html" for n in pipeline.chapter_names())} <= set(pages)
    assert {p: r.problems for p, r in pages.items() if r.problems} == {}
    from refacelib.pipeline import config

    tiny = config.open_run("tiny", "phantom", create=False)
    optional = {n for n in pipeline.CHAPTER_INPUTS  # e.g. Controls before `make controls`
                if not any(p.exists() for p in pipeline.chapter_input_paths(tiny, n).values())}
    optional.discard("04_training")  # its loss curves exist with or without a recipe comparison
    with_figures = [f"chapters/{n}.html" for n in pipeline.chapter_names()
                    if "save_figure(" in (pipeline.project_root() / "notebooks" / f"{n}.py").read_text()
                    and n not in optional]
    assert with_figures and all(pages[p].images > 0 for p in with_figures), {p: pages[p].images for p in with_figures}
    assert all((run / "screenshots" / r.screenshot).stat().st_size > 10_000 for r in results)


def test_second_build_executes_nothing(tiny_book):
    index, _ = tiny_book
    before = index.stat().st_mtime
    log = []
    pipeline.build_book("tiny", "phantom", log=log.append)
    assert not any("executing" in line for line in log), log
    assert "HTML up to date" in log and index.stat().st_mtime == before


def test_refaced_files_do_not_depend_on_the_number_of_writer_processes(tiny_book):
    import hashlib

    from refacelib.pipeline import config, refacing

    run = config.open_run("tiny", "phantom")
    study = refacing.setup(run)
    ckpt, _ = refacing.trained_cascade(run, study, progress=False)
    ids, methods = list(study.test_subjects)[:3], study.methods[:1]
    digests = []
    for n_jobs in (2, 1):
        out, _ = refacing.reface_test_set(run, study.deface_folder, ckpt, ids, methods, study.template,
                                          study.config, progress=False, n_jobs=n_jobs)
        files = sorted(out.rglob("*.nii.gz"))
        # + the linear prior and its person-independent twin fitted to shuffled faces
        names = len(refacing.REFACED_NAMES) + len(refacing.LINEAR_CANDIDATES) * (run.params["cascade"].get("prior") == "ridge")
        assert len(files) == len(ids) * len(methods) * names
        digests.append({f.relative_to(out): hashlib.sha256(nib.load(str(f)).get_fdata().tobytes()).hexdigest()
                        for f in files})
        shutil.rmtree(out)
    assert digests[0] == digests[1]


def test_failing_chapter_names_itself_and_keeps_the_last_good_book(tiny_book, project):
    index, _ = tiny_book
    before = index.stat().st_mtime
    source = project / "notebooks" / "01_cohort.py"
    original = source.read_text()
    source.write_text(original + '\n# %%\nraise RuntimeError("planted failure")\n')
    try:
        with pytest.raises(pipeline.ChapterFailed, match=r"chapter 01_cohort .*planted failure"):
            pipeline.build_book("tiny", "phantom", log=lambda *_: None)
    finally:
        source.write_text(original)
    assert index.exists() and index.stat().st_mtime == before
    assert (index.parents[1] / "failed" / "01_cohort.ipynb").exists()


def _lps_bids(src_root, dest, n=6):
    """A BIDS folder in LPS orientation with anisotropic voxels, no split or muscle columns.

    Its ids (``sub-mri01`` ...) appear nowhere in the book's prose, so a leak is visible.
    """
    rows = []
    for k, sub in enumerate(sorted(src_root.glob("sub-*"))[:n], 1):
        img = nib.load(str(sub / "anat" / f"{sub.name}_T1w.nii.gz"))
        data = np.asarray(img.dataobj, dtype=np.float32)
        data = data[::-1, ::-1, ::2]  # flip to LPS, keep every second axial slice
        affine = img.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
        affine = affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1],
                                    [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
        pid = f"sub-mri{k:02d}"
        out = dest / pid / "anat"
        out.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, affine), str(out / f"{pid}_T1w.nii.gz"))
        rows.append({"participant_id": pid, "age": 60 + len(rows), "sex": "F" if len(rows) % 2 else "M"})
    pd.DataFrame(rows).to_csv(dest / "participants.tsv", sep="\t", index=False)
    return dest


def test_same_chapters_run_on_an_lps_anisotropic_bids_folder(tiny_book, project, tmp_path):
    index, _ = tiny_book
    cohort_root = next((index.parents[1] / "artifacts").glob("phantom-*"))
    bids = _lps_bids(cohort_root, tmp_path / "my_study")
    raw = nib.load(str(next(bids.rglob("*_T1w.nii.gz"))))
    assert nib.aff2axcodes(raw.affine) == ("L", "P", "S") and len(set(raw.header.get_zooms())) > 1
    real_index = pipeline.build_book("tiny", str(bids), log=lambda *_: None)
    run = real_index.parents[1]
    assert run.name.startswith("tiny-my_study-")
    chapter = _html_text(run / "html" / "chapters" / "01_cohort.html")
    assert "user-supplied BIDS-style dataset (6 participants, without CT muscle columns)" in chapter
    assert "Montage withheld" in chapter and not (run / "figures" / "cohort_montage.png").exists()
    assert not (run / "figures" / "deface_example_render.png").exists()  # real faces withheld
    assert "brain_mask_source" in pd.read_csv(run / "tables" / "deface_qc.csv")
    muscle = _html_text(run / "html" / "chapters" / "07_muscle.html")
    assert "Skipped:" in muscle and not (run / "tables" / "muscle_corr.csv").exists()
    assert not (run / "figures" / "face_renderings.png").exists()  # real faces withheld
    assert (run / "tables" / "face_msd.csv").exists()
    assert _private_paths(run / "html", str(bids), str(tmp_path)) == []
    assert _private_paths(run / "notebooks", str(bids), str(tmp_path)) == []
    # privacy: pseudonyms instead of ids in every published table and page; faces withheld, and said so
    raw_ids = list(pd.read_csv(bids / "participants.tsv", sep="\t")["participant_id"])
    published = [p for p in (run / "html").rglob("*") if p.suffix in (".html", ".js", ".ipynb", ".md", ".txt")]
    published += [*(run / "tables").glob("*.csv"), *(run / "notebooks").glob("*.ipynb")]
    leaks = [f"{p.relative_to(run)}: {i}" for p in published for i in raw_ids if i in p.read_text(errors="ignore")]
    assert leaks == []
    shown = pd.read_csv(run / "tables" / "participants.csv")["participant_id"]
    assert len(shown) == len(raw_ids) and shown.str.match(r"sub-p[0-9a-f]{8}$").all()
    for name in ("01_cohort", "02_defacing", "05_refacing", "06_reid"):
        assert re.search(r"withheld: real faces are not published", _html_text(run / "html" / "chapters" /
                                                                               f"{name}.html"), re.I), name
    assert not list((run / "figures").glob("*montage*")) and not list((run / "figures").glob("*render*"))

    # publish_faces true: the renders are published, and every one carries eye bars
    def renders(folder):
        return sorted(p for p in folder.glob("*.png") if "render" in p.name or p.name.startswith("face_distance_"))

    phantom = renders(index.parents[1] / "figures")
    assert phantom and all(privacy.eye_bars(p) == [] for p in phantom)  # the phantom's have none: the check can fail
    pipeline.build_book("tiny", str(bids), publish_faces=True, log=lambda *_: None)
    shown = renders(run / "figures")
    assert [p.name for p in shown] == [p.name for p in phantom]
    chapter_of = {"deface": "02_defacing", "refacing": "05_refacing", "face": "06_reid"}
    for path in shown:
        bars = len(privacy.eye_bars(path))
        assert bars >= 5, f"{path.name}: {bars} eye bars for five views of a real face"
        page = run / "html" / "chapters" / f"{chapter_of[path.name.split('_')[0]]}.html"
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text())
        in_page = [len(privacy.eye_bars((page.parent / src).resolve())) for src in images]
        assert bars in in_page, f"{path.name} ({bars} bars) is not shown with its bars on {page.name}: {in_page}"
    for name in ("02_defacing", "05_refacing", "06_reid"):  # the notice is left only in the code cells
        in_code = (ROOT / "notebooks" / f"{name}.py").read_text().count("Withheld: real faces")
        assert _html_text(run / "html" / "chapters" / f"{name}.html").count("Withheld: real faces") == in_code, name
    published = [p for p in (run / "html").rglob("*") if p.suffix in (".html", ".js", ".ipynb", ".md", ".txt")]
    assert [i for p in published for i in raw_ids if i in p.read_text(errors="ignore")] == []
    assert _private_paths(run / "html", str(bids), str(tmp_path)) == []


def _untrained_models(config):
    from refacelib.diffusion.cascade import STAGE_IN_CHANNELS, make_unet

    return tuple(make_unet(STAGE_IN_CHANNELS[s], stage=config.stage(s)) for s in (1, 2))


def test_untrained_cascade_equals_the_matched_baseline_voxel_for_voxel(tiny_book):
    """The baseline is the cascade's own output before training: same prior, intensity match, grid,
    upsampling, edge treatment and composite. Any difference in the book is what the model learned."""
    import torch

    from refacelib.pipeline import config, refacing

    run = config.open_run("tiny", "phantom")
    study = refacing.setup(run)
    models = _untrained_models(study.config)
    for stage, model in zip((1, 2), models):  # MONAI zero-initialises the output convolution
        shape = (1, model.conv_in.conv.in_channels, *(4 * study.config.stage(stage).multiple,) * 3)
        out = model(torch.randn(shape), timesteps=torch.tensor([5]))
        assert torch.count_nonzero(out) == 0
    ids = list(study.test_subjects)[:2]
    out, _ = refacing.reface_test_set(run, study.deface_folder, run.artifacts / "untrained", ids,
                                      study.methods, study.template, study.config, progress=False, n_jobs=1,
                                      models=models)
    try:
        for method in study.methods:
            for sid in ids:
                base = nib.load(str(out / f"{method}_average" / f"{sid}.nii.gz")).get_fdata()
                for name in ("sample", "mean"):
                    img = nib.load(str(out / f"{method}_{name}" / f"{sid}.nii.gz")).get_fdata()
                    np.testing.assert_array_equal(img, base, err_msg=f"{method} {name} {sid}")
    finally:
        shutil.rmtree(out)


def test_no_model_input_comes_from_a_test_subjects_original(tiny_book, tmp_path):
    """Change only the original (true) face of a test subject: every input of the cascade and the
    refaced output stay bit-identical (the attacker sees the defaced image and the training cohort)."""
    from refacelib.pipeline import config, refacing, stages

    run = config.open_run("tiny", "phantom")
    study = refacing.setup(run)
    ckpt, _ = refacing.trained_cascade(run, study, progress=False)
    sid, method = next(iter(study.test_subjects)), study.methods[1]
    copy = tmp_path / study.deface_folder.name
    shutil.copytree(study.deface_folder, copy)
    removal = stages.load_defaced(copy, f"{method}_removal", sid)[0] > 0
    for space in ("subject", "template"):
        base = copy / ("template_space" if space == "template" else "") / "original"
        img = nib.load(str(base / f"{sid}.nii.gz"))
        data = np.asarray(img.dataobj, np.float32)
        face = removal if space == "subject" else stages.load_defaced(copy, f"{method}_removal", sid,
                                                                      space="template")[0] > 0
        data[face] = data[face] * 1.5 + 10.0  # another face
        nib.save(nib.Nifti1Image(data, img.affine), str(base / f"{sid}.nii.gz"))
    keys = ("defaced", "mask", "prior", "template_prior")
    a = refacing.build_examples(study.deface_folder, [sid], [method], study.template, 4.0, attacker=True,
                                baselines=True)
    b = refacing.build_examples(copy, [sid], [method], study.template, 4.0, attacker=True, baselines=True)
    assert not np.array_equal(a["original"], b["original"])  # the truth did change
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(a["match"][0], b["match"][0])
    assert a["scale"] == b["scale"]
    outs = []
    for folder in (study.deface_folder, copy):
        out, _ = refacing.reface_test_set(run, folder, ckpt, [sid], [method], study.template, study.config,
                                          progress=False, n_jobs=1)
        outs.append({p.relative_to(out): nib.load(str(p)).get_fdata() for p in sorted(out.rglob("*.nii.gz"))})
        shutil.rmtree(out)
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=str(key))


def test_controls_table_from_the_cached_run(tiny_book):
    """`make controls` runs the experiment per coupling and writes tables/controls.csv; the profile's own
    coupling reuses the book's cached run (a full control run per coupling is exercised by make controls)."""
    from refacelib import controls
    from refacelib.pipeline import config

    own = 0.8  # PhantomParams' default, which the tiny profile keeps
    assert controls.control_run("tiny", own).folder == config.open_run("tiny", "phantom").folder
    null = controls.control_run("tiny", 0.0)
    assert null.folder.name == "tiny-phantom-null"
    assert null.params["phantom"]["face_coupling"] == 0.0
    assert null.params["phantom"]["soft_tissue_scalp_fraction"] == 0.0  # nothing visible predicts the face:
    assert null.params["phantom"]["cranial_amplitude_mm"] == 0.0  # no skull deformation to fade into it either
    assert "cranial_amplitude_mm" not in controls.control_run("tiny", 0.5).params["phantom"]
    assert "soft_tissue_scalp_fraction" not in controls.control_run("tiny", 0.5).params["phantom"]
    # the permutation control's own training is tested below without its hours on a CPU
    assert controls.main(["--profile", "tiny", "--couplings", f"{own:g}", "--permutation", "no"]) == 0
    table = pd.read_csv(config.open_run("tiny", "phantom").tables / "controls.csv")
    assert set(table["coupling"]) == {own}
    assert {"refaced", "refaced_mean", "swapped", "oracle"} <= set(table["estimator"])
    assert {"hl_diff_mm", "ci_low_mm", "ci_high_mm", "p_holm", "rbc"} <= set(table.columns)
    from refacelib.pipeline import refacing as _refacing

    assert set(table["recipe"]) == {_refacing.recipe_id(config.open_run("tiny", "phantom"))}
    # a control's cascade ships like the book's (make controls on a fresh clone then skips its training)
    from refacelib.pipeline import refacing

    shipped = controls.ship_control(config.open_run("tiny", "phantom"))
    assert shipped.parent == refacing.shipped_root() and (shipped / "training.json").is_file()
    provenance = (shipped / "training.json").read_text()
    assert controls.ship_control(config.open_run("tiny", "phantom"), command="again") is None  # shipped already
    assert (shipped / "training.json").read_text() == provenance
    assert refacing.install_shipped(shipped.parent.parent / "elsewhere" / shipped.name)
    shutil.rmtree(shipped)


class _StopTraining(Exception):
    pass


def test_permutation_control_trains_on_shuffled_faces_and_writes_its_tables(tiny_book, monkeypatch):
    """`make controls` (permutation): the cascade's training pairs are shuffled (the test subjects never
    are), and its tables carry the book's recipe. Training and refacing are stubbed: the stages they
    run are those of the book, tested above."""
    from refacelib import controls
    from refacelib.pipeline import config, refacing

    run = config.open_run("tiny", "phantom")
    perm = controls.permutation_run(run)
    study = refacing.setup(perm)
    seen = {}

    def stop(stage, data, *args, **kwargs):
        seen["original"] = np.asarray(data["original"])
        raise _StopTraining

    monkeypatch.setattr(refacing, "train_stage", stop)
    with pytest.raises(_StopTraining):
        refacing.trained_cascade(perm, study, progress=False)
    voxel = run.params["cascade"]["voxel_mm"]
    own = refacing.build_examples(study.deface_folder, study.ids["train"], study.methods, study.template, voxel)
    assert seen["original"].shape == np.asarray(own["original"]).shape
    assert np.array_equal(seen["original"], np.asarray(refacing.shuffle_faces(own)["original"]))
    assert not np.array_equal(seen["original"], np.asarray(own["original"]))  # the check can fail

    own_msd = pd.read_csv(run.tables / "face_msd.csv")
    fake = own_msd.assign(msd_mm=own_msd["msd_mm"] * 1.1)  # stands in for the permutation model's distances

    def measured(control_run, *, progress=True):
        assert control_run.params["cascade"]["shuffle_faces"] is True and control_run.folder == run.folder
        return fake, controls.face_tests(fake)

    monkeypatch.setattr(controls, "run_control", measured)
    assert controls.main(["--profile", "tiny", "--permutation", "only"]) == 0
    recipe = refacing.recipe_id(run)
    tests = pd.read_csv(run.tables / "controls_permutation.csv")
    assert set(tests["recipe"]) == {recipe} and {"swapped", "average"} <= set(tests["baseline"])
    msd = pd.read_csv(run.tables / "controls_permutation_msd.csv")
    assert list(msd.columns) == [*controls.PERMUTATION_MSD_COLUMNS, "recipe"] and set(msd["recipe"]) == {recipe}
    paired = controls.permutation_tests(own_msd, msd)
    main_rows = paired[paired["estimator"] == "refaced_mean"]
    assert len(main_rows) and (main_rows["hl_diff_mm"] < 0).all()  # the book's model: 10% closer, every row


def test_controls_chapter_renders_the_tables_of_make_controls(tiny_book):
    """The Controls chapter executes with a controls table present (the book's tiny build has none):
    the coupling-0.8 tables of the cached run, relabelled as coupling 0 so every section of the chapter runs."""
    from refacelib import controls
    from refacelib.pipeline import book as pipeline
    from refacelib.pipeline import config

    run = config.open_run("tiny", "phantom")
    if not (run.tables / "controls_offsets.csv").exists():
        assert controls.main(["--profile", "tiny", "--couplings", "0.8", "--permutation", "no"]) == 0
    saved = {}
    try:
        for name in ("controls.csv", "controls_offsets.csv"):
            path = run.tables / name
            saved[path] = path.read_bytes()
            table = pd.read_csv(path)
            # coupling 1 trained with another recipe: left out of the chapter, with a note
            pd.concat([table, table.assign(coupling=0.0), table.assign(coupling=1.0, recipe="other")]).to_csv(
                path, index=False)
        # the permutation control's table (here the coupling-0.8 tests stand in for it)
        perm_path = run.tables / "controls_permutation.csv"
        saved[perm_path] = perm_path.read_bytes() if perm_path.exists() else None
        pd.read_csv(run.tables / "controls.csv").query("coupling == 0.8").drop(columns="coupling").to_csv(
            perm_path, index=False)
        rows = pipeline.execute_chapters(run, ["09_controls"], force=True, log=lambda *a: None)
        assert [r["chapter"] for r in rows] == ["09_controls"]
        for name in ("controls_dose_response.png", "controls_offsets.png", "controls_person_specific.png"):
            assert (run.figures / name).stat().st_size > 5_000, name
        text = (run.folder / "notebooks" / "09_controls.ipynb").read_text()
        assert "Negative control (null phantom)" in text and "Traceback" not in text
        # the coupling-0 rows were read: one of report.null_reading's readings is glued
        assert any(p in text for p in ("found no advantage where none was planted", "false positive of the pipeline", "not a clean null",
                                       "they correct the average face itself", "are corrections of the average face"))
        assert "Couplings 1 were run with another training recipe" in text
        assert "Trained on shuffled faces, the refaced face was significantly closer than the swap check" in text
        assert "from coupling 0 to 0.8 it changed by" in text  # the dose-response sentence, from the table
    finally:
        for path, data in saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


def test_training_recipe_ablation_on_the_validation_split(tiny_book):
    """`make ablation` refaces the validation subjects only, writes one row per recipe, and the
    training chapter shows it when a row trained the run's own checkpoints."""
    from refacelib import ablation
    from refacelib.pipeline import book as pipeline
    from refacelib.pipeline import config, refacing

    run = config.open_run("tiny", "phantom")
    assert refacing.training_plan(run) is None  # the book trained (and cached) the cascade
    longer = ablation.variant_run(run, next(v for k, v in ablation.variants(run.params).items() if k.startswith("4x steps")))
    warning = refacing.training_plan(longer)
    assert warning.startswith("warning:") and "48 + 48 steps" in warning
    assert ablation.main(["--profile", "tiny", "--variants", "base recipe"]) == 0
    table = pd.read_csv(run.tables / "ablation.csv")
    study = refacing.setup(run)
    own = refacing._checkpoint_folder(run, study.config, study.data_key).name
    assert table["variant"].tolist() == ["base recipe"] and table["checkpoint"].tolist() == [own]
    assert table["selected"].tolist() == [True] and table["n_subjects"].tolist() == [len(study.ids["val"])]
    assert np.isfinite(table[["stage1_val_loss", "stage2_val_loss", "refaced_mean_minus_average_mm"]].values).all()
    msd = pd.read_csv(run.tables / "ablation_msd" / f"{own}.csv")
    assert set(msd["subject"]) == set(study.ids["val"])  # no test subject is refaced or measured
    assert not set(msd["subject"]) & set(study.test_subjects)
    try:
        rows = pipeline.execute_chapters(run, ["04_training"], force=True, log=lambda *a: None)
        assert [r["chapter"] for r in rows] == ["04_training"]
        assert (run.figures / "training_ablation.png").stat().st_size > 5_000
        text = (run.folder / "notebooks" / "04_training.ipynb").read_text()
        assert "gained most for the person on the validation split" in text and "Traceback" not in text
    finally:
        (run.tables / "ablation.csv").unlink()


def _assert_digest_follows(digest, tmp_path, module: str) -> None:
    """``digest(root)`` of a copy of the package: equal to this package's, unchanged by an edit of
    report/values.py, changed by an edit of ``module`` (a stage's key follows its own code only)."""
    from refacelib.pipeline import cache

    package = tmp_path / "refacelib"
    shutil.copytree(Path(cache.__file__).resolve().parents[1], package)
    before = digest(package)
    assert before == digest()
    (package / "report" / "values.py").write_text("# edited\n")
    assert digest(package) == before
    with open(package / module, "a") as fh:
        fh.write("\n# edited\n")
    assert digest(package) != before
    shutil.rmtree(package)


def test_face_evaluation_is_a_cached_stage_equal_to_a_fresh_measurement(tiny_book, monkeypatch, tmp_path):
    """Chapter 06's face distances come from a stage of the run's cache: read back, they equal a fresh
    face_msd_table bit for bit; a second call measures nothing; an interrupted stage or an edit of the
    measuring code measures again, an edit elsewhere does not."""
    from refacelib.pipeline import config, evaluation, refacing

    run = config.open_run("tiny", "phantom")
    study = refacing.setup(run)
    ckpt, _ = refacing.trained_cascade(run, study, progress=False)
    refaced, _ = refacing.refaced_test_set(run, study, ckpt, progress=False)
    args = (study.deface_folder, refaced, study.template, study.test_subjects, study.methods)
    folder = evaluation.faces_folder(run, study.deface_folder, refaced, study.test_subjects, study.methods)
    assert (folder / "done.json").is_file()  # the book's chapter 06 made it
    fresh, fresh_surfaces, fresh_floor = evaluation.face_msd_table(*args, progress=False, n_jobs=1)
    calls = []
    measure = evaluation.face_msd_table
    monkeypatch.setattr(evaluation, "face_msd_table", lambda *a, **k: calls.append(1) or measure(*a, **k))
    msd, surfaces, floor = evaluation.face_evaluation(run, *args, progress=False)
    assert calls == []  # read from the cache
    pd.testing.assert_frame_equal(msd, fresh, check_exact=True)
    pd.testing.assert_frame_equal(floor, fresh_floor, check_exact=True)
    kept = {k for k in fresh_surfaces if k[1] == "original" or k[1].split(":")[1] in evaluation.ATTACK_CANDIDATES}
    assert set(surfaces) == kept and len(kept) == len(study.test_subjects) * (1 + 4 * len(study.methods))
    assert all(np.array_equal(surfaces[k], fresh_surfaces[k]) and surfaces[k].dtype == fresh_surfaces[k].dtype
               for k in kept)
    # the chapter's own table is this stage's
    pd.testing.assert_frame_equal(pd.read_csv(run.tables / "face_msd.csv", float_precision="round_trip",
                                              dtype={"subject": str, "test_set": str}), msd, check_exact=True)
    # an interrupted stage (no record) measures again
    (folder / "done.json").unlink()
    evaluation.face_evaluation(run, *args, progress=False)
    assert calls == [1] and (folder / "done.json").is_file()
    # the key follows the measuring code: a changed metric module changes the digest, another module does not
    _assert_digest_follows(evaluation.metric_source_digest, tmp_path, "evaluation/reid.py")
    monkeypatch.setattr(evaluation, "metric_source_digest", lambda root=None: "edited")
    assert evaluation.faces_folder(run, study.deface_folder, refaced, study.test_subjects, study.methods) != folder


def test_muscle_analysis_is_a_cached_stage_equal_to_a_fresh_analysis(tiny_book, monkeypatch, tmp_path):
    """Chapter 07's analysis comes from a stage of the run's cache: read back, its tables equal a fresh
    analyze_muscle bit for bit; a second call computes nothing; an interrupted stage computes again; the key
    follows the analysing code and the participants' muscle values."""
    from refacelib.deface import methods as deface
    from refacelib.evaluation import muscle
    from refacelib.pipeline import cohort, config, muscle_stage, stages

    run = config.open_run("tiny", "phantom")
    ds = cohort.prepare_dataset(run)
    template = stages.study_template(run)
    deface_folder, _ = stages.deface_cohort(run, ds, template)
    images = ["original", *run.params["deface"]["methods"]]
    calls = []
    analyze = muscle.analyze_muscle
    monkeypatch.setattr(muscle, "analyze_muscle", lambda *a, **k: calls.append(1) or analyze(*a, **k))
    result = muscle_stage.muscle_evaluation(run, ds)
    assert calls == []  # the book's chapter 07 made it
    settings = run.params["muscle"]
    features = {name: stages.face_features(deface_folder, result.table["participant_id"], name,
                                           region=deface.face_region(template), brain=template.brain,
                                           stride=settings["stride"]) for name in images}
    assert result.n_features == features["original"].shape[1]
    corr, diff, boot = analyze(result.table, features, n_boot=settings["n_boot"], seed=int(run.params["seed"]),
                               n_splits=settings["n_splits"], n_components=settings["n_components"])
    for stored, fresh in ((result.corr, corr), (result.diff, diff), (result.boot, boot)):
        pd.testing.assert_frame_equal(stored, fresh, check_exact=True)
    assert result.diff.loc[result.diff["image"] == "skullstrip", "diff_significant"].isna().all()
    # the chapter's own table is this stage's
    pd.testing.assert_frame_equal(pd.read_csv(run.tables / "muscle_corr.csv", float_precision="round_trip"),
                                  result.corr, check_exact=True)
    folder = muscle_stage.muscle_folder(run, deface_folder, result.table, images)
    (folder / "done.json").unlink()  # an interrupted stage computes again
    muscle_stage.muscle_evaluation(run, ds)
    assert calls == [1] and (folder / "done.json").is_file()
    # the key: the analysing code and the muscle values, not an edit elsewhere
    _assert_digest_follows(muscle_stage.code_digest, tmp_path, "evaluation/muscle.py")
    changed = result.table.assign(muscle_hu_thigh=result.table["muscle_hu_thigh"] + 1.0)
    assert muscle_stage.muscle_folder(run, deface_folder, changed, images) != folder


def test_ridge_prior_cascade_end_to_end(tiny_book, tmp_path):
    """cascade.prior: ridge trains on out-of-fold linear priors, refaces with the linear prior
    (written as its own candidate, measured like the others) and ships the record its refit needs."""
    import json

    from refacelib import ablation
    from refacelib.pipeline import config, evaluation, refacing

    run = config.open_run("tiny", "phantom")
    assert run.params["cascade"]["prior"] == "ridge"  # the profiles' recipe: the book built with it
    study = refacing.setup(run)
    ckpt, _ = refacing.trained_cascade(run, study, progress=False)
    plain = ablation.variant_run(run, {"cascade.prior": "average"})
    assert ckpt != refacing._checkpoint_folder(plain, study.config, study.data_key)
    record = json.loads((ckpt / refacing.LINEAR_RECORD).read_text())
    assert set(record["methods"]) == set(study.methods) and record["train_subjects"] == study.ids["train"]
    ids, method = list(study.test_subjects)[:2], study.methods[0]
    out, _ = refacing.reface_test_set(run, study.deface_folder, ckpt, ids, [method], study.template,
                                      study.config, progress=False, n_jobs=1)
    msd, _, _ = evaluation.face_msd_table(study.deface_folder, out, study.template,
                                          {sid: study.test_subjects[sid] for sid in ids}, [method],
                                          keep_surfaces=False, progress=False, n_jobs=1)
    assert {"linear", "linear_permuted", "refaced_mean", "average"} <= set(msd["candidate"])
    linear_img = nib.load(str(out / f"{method}_linear" / f"{ids[0]}.nii.gz")).get_fdata()
    average_img = nib.load(str(out / f"{method}_average" / f"{ids[0]}.nii.gz")).get_fdata()
    assert not np.allclose(linear_img, average_img)  # the linear prior changed the face
    shipped = refacing.ship(ckpt, root=tmp_path / "ship")
    assert json.loads((shipped / refacing.LINEAR_RECORD).read_text()) == record
    target = tmp_path / "installed" / ckpt.name
    assert refacing.install_shipped(target, root=tmp_path / "ship")
    assert (target / refacing.LINEAR_RECORD).is_file()
