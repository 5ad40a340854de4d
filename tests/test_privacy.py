"""Pseudonyms replace the participant ids of real data everywhere after loading."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from refacelib.data import privacy
from refacelib.pipeline import cohort, config
from refacelib.data.bids import load_bids

RAW_IDS = ["sub-alice", "sub-bob", "sub-carol", "sub-dave", "sub-erin"]


def _head(rng, voxel=4.0):
    """An ellipsoid 'head' (about 3.7 L) in noisy air: a whole head to the input screen."""
    g = (np.indices((48, 56, 60)) - np.array([23.5, 27.5, 29.5])[:, None, None, None]) * voxel
    inside = (g[0] / 80) ** 2 + (g[1] / 100) ** 2 + (g[2] / 110) ** 2 < 1
    return (np.where(inside, 100.0, 0.0) + 1.0 + np.abs(rng.normal(0, 3, inside.shape))).astype(np.float32)


@pytest.fixture
def study(tmp_path, rng):
    root = tmp_path / "study"
    for pid in RAW_IDS:
        (root / pid / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(_head(rng), np.diag([4.0, 4.0, 4.0, 1.0])), str(root / pid / "anat" / f"{pid}_T1w.nii.gz"))
    pd.DataFrame({"participant_id": RAW_IDS, "age": [61, 72, 55, 68, 70], "sex": list("FMFMF")}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    return root


def test_pseudonym_is_stable_keyed_and_not_the_id():
    a = privacy.pseudonym("sub-alice", key=b"key-1")
    assert a == privacy.pseudonym("sub-alice", key=b"key-1") and a.startswith("sub-p") and "alice" not in a
    assert a != privacy.pseudonym("sub-alice", key=b"key-2") != privacy.pseudonym("sub-bob", key=b"key-1")
    with pytest.raises(ValueError):
        privacy.pseudonym("sub-alice", key=b"")


def test_key_depends_on_the_private_table_and_seed(study):
    key = privacy.dataset_key(study, seed=7)
    assert key == privacy.dataset_key(study, seed=7) != privacy.dataset_key(study, seed=8)
    (study / "participants.tsv").write_text((study / "participants.tsv").read_text() + "\n")
    assert privacy.dataset_key(study, seed=7) != key


def test_pseudonymized_dataset_keeps_rows_splits_and_images(study):
    raw = load_bids(study, seed=3)
    ds = privacy.pseudonymize_dataset(raw, key=b"k")
    assert [s.t1w for s in ds.subjects] == [s.t1w for s in raw.subjects]
    assert list(ds.participants["split"]) == list(raw.participants["split"])
    assert list(ds.participants["age"]) == list(raw.participants["age"])
    assert ds.ids == [privacy.pseudonym(i, key=b"k") for i in raw.ids]
    assert [s.row["participant_id"] for s in ds.subjects] == ds.ids == list(ds.participants["participant_id"])
    assert list(raw.participants["participant_id"]) == sorted(RAW_IDS)  # the input is left as it was


def test_a_run_on_real_data_sees_only_pseudonyms(study, tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    run = config.open_run("tiny", str(study))
    ds = cohort.prepare_dataset(run)
    text = ds.participants.to_csv() + " ".join(map(str, (s.row for s in ds.subjects))) + " ".join(ds.ids)
    assert not any(pid in text for pid in RAW_IDS)
    assert all(i.startswith("sub-p") for i in ds.ids)
    assert cohort.prepare_dataset(run).ids == ds.ids  # stable from one chapter to the next
    assert (run.artifacts / "input_check.csv").exists()


# --- Faces: the decision, eye bars on renders and slices (fast: no notebook is executed) -------------------

FACE_CALLS = {"render_grid", "render_views", "render_view", "plot_mid_sagittal_row", "plot_montage",
              "mid_sagittal", "mid_sagittal_slices"}


@pytest.mark.parametrize("is_phantom, publish, show, bar", [
    (True, False, True, False), (True, True, True, False),
    (False, False, False, True), (False, "0", False, True), (False, True, True, True), (False, "1", True, True)])
def test_face_policy_withholds_real_faces_and_bars_them_when_published(is_phantom, publish, show, bar):
    assert privacy.face_policy(is_phantom, publish) == (show, bar)


def test_face_policy_rejects_an_unclear_flag():
    with pytest.raises(config.ConfigError, match="publish_faces"):
        privacy.face_policy(False, "maybe")


def _chapters():
    import pathlib

    return sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def _face_wiring_problems(src: str, name: str) -> tuple[list[str], int]:
    """Static check of a chapter: each face figure sits under `faces.show` (the policy), renders are barred."""
    import ast

    tree = ast.parse(src)

    def allowed(value):
        """`faces` comes from the policy of this run and the chapter's publish_faces, nothing else."""
        text = ast.unparse(value)
        if text == "face_policy(run.is_phantom, publish_faces)":
            return True
        return (isinstance(value, ast.Call) and ast.unparse(value.func) == "start_chapter"
                and [ast.unparse(a) for a in value.args[:3]] == ["profile", "dataset", "publish_faces"])

    sources = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
               if (isinstance(t, ast.Name) and t.id == "faces")
               or (isinstance(t, ast.Tuple) and any(isinstance(e, ast.Name) and e.id == "faces" for e in t.elts))]
    decisions = sorted(ast.unparse(v) for v in sources if not allowed(v)) or ([] if sources else ["(none)"])
    problems, checked = [], 0
    for stmt in tree.body:
        calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call)
                 and getattr(n.func, "attr", getattr(n.func, "id", None)) in FACE_CALLS]
        checked += len(calls)
        where = f"{name}:{stmt.lineno}"
        if calls and "faces.show" not in ast.get_source_segment(src, stmt):
            problems.append(f"{where}: a face figure outside `faces.show`")
        if calls and decisions:
            problems.append(f"{where}: faces = {decisions}")
        for call in calls:
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            func = getattr(call.func, "attr", None)
            if func in ("render_grid", "render_views") and kw.get("eye_bar") != "faces.eye_bar":
                problems.append(f"{where}: {func} with eye_bar={kw.get('eye_bar')}")
            if func == "render_view" and "eyes_world" not in kw:
                problems.append(f"{where}: render_view without eyes_world")
    return problems, checked


def test_chapters_show_faces_only_through_the_policy():
    total = 0
    for path in _chapters():
        problems, checked = _face_wiring_problems(path.read_text(), path.name)
        assert problems == []
        total += checked
    assert total >= 8  # the chapters do draw faces


@pytest.mark.parametrize("chapter, old, new", [
    ("02_defacing.py", "if faces.show:\n    fig = viz.plot_mid_sagittal_row", "if True:\n    fig = viz.plot_mid_sagittal_row"),
    ("02_defacing.py", "eye_bar=faces.eye_bar", "eye_bar=False"),
    ("06_reid.py", "start_chapter(profile, dataset, publish_faces", "start_chapter(profile, dataset, True"),
    ("05_refacing.py", "run, note, faces, chapter_start, study = start_chapter(",
     "faces = FacePolicy(True, False)\nrun, note, _, chapter_start, study = start_chapter("),
    ("08_comparison.py", "if faces.show else None for k", "for k"),
])
def test_the_wiring_check_catches_a_removed_protection(chapter, old, new):
    path = next(p for p in _chapters() if p.name == chapter)
    src = path.read_text()
    assert old in src
    assert _face_wiring_problems(src.replace(old, new, 1), chapter)[0] != []


def _face_head(rng):
    """A head 180 mm tall at 2 mm voxels, face at +y, a nose 150 mm below the vertex (voxel z 16-24)."""
    shape = (60, 110, 100)
    g = np.indices(shape)
    head = ((g[0] - 30) / 28) ** 2 + ((g[1] - 50) / 45) ** 2 + ((g[2] - 50) / 45) ** 2 <= 1
    head[27:34, 75:100, 16:25] = True
    img = np.where(head, 100.0, 0.0) + np.abs(rng.normal(0, 2, shape))
    return img.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])


def _pixels(fig):
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return rgba


def _bar_at(bars, fig_rc):
    r, c = fig_rc
    return any(r0 <= r < r1 and c0 <= c < c1 for r0, c0, r1, c1 in bars)


def _data_to_pixel(fig, ax, row, col):
    """Figure pixel (row from the top) of an image pixel (row, col) of ``ax``."""
    x, y = ax.transData.transform((col, row))
    return int(round(fig.canvas.get_width_height()[1] - y)), int(round(x))


def test_renders_of_a_real_face_carry_an_eye_bar_in_every_view(rng):
    from refacelib.imaging import render
    from refacelib.imaging.surface import head_mask

    img, affine = _face_head(rng)
    mask = head_mask(img)
    grid = render.view_grid(mask, affine, pixel_mm=2.0)  # render_grid's framing of these rows
    eyes = render.estimate_eyes(mask, affine, grid=grid)
    assert np.allclose(eyes[:, 2], 2 * 20 + 35, atol=3)  # 35 mm above the nose tip (voxels z 16-24)
    on_eyes = render.project_points(eyes, azimuth_deg=render.VIEWS["front"], grid=grid)
    for is_phantom, expected in ((False, 10), (True, 0)):
        policy = privacy.face_policy(is_phantom, True)
        fig = render.render_grid({"original": (mask, affine), "copy": (mask, affine)}, eye_bar=policy.eye_bar,
                                 pixel_mm=2.0)
        points = [_data_to_pixel(fig, ax, *rc) for ax in fig.axes[2::5] for rc in on_eyes]  # frontal panels
        bars = privacy.eye_bars(_pixels(fig))
        assert len(bars) == expected, (is_phantom, bars)  # one bar per view of each row
        assert all(_bar_at(bars, rc) for rc in points) == policy.eye_bar  # over both eyes


def _check_slice_bars(fig, axes, skin_col, *, eye_z, shape):
    """Each panel has one bar, at eye level, over the anterior skin (the profile is hidden)."""
    points = [_data_to_pixel(fig, ax, shape[2] - 1 - eye_z, skin_col) for ax in axes]
    bars = privacy.eye_bars(_pixels(fig))
    assert len(bars) == len(axes), bars
    assert all(_bar_at(bars, rc) for rc in points), (bars, points)


def test_mid_sagittal_slices_of_a_real_face_carry_an_eye_bar(rng):
    from refacelib.report import viz

    img, affine = _face_head(rng)
    defaced = np.where(np.indices(img.shape)[1] > 80, np.float32(0), img)  # removed voxels are pure black
    eye_z, front = 20 + 17, 50 + 45  # eye level 35 mm above the nose tip; brow on the anterior skin
    images = {"original": (img, affine), "defaced": (defaced, affine)}  # the bar comes from the original
    fig = viz.plot_mid_sagittal_row(images)  # a real subject's figure: no simulation stamp
    _check_slice_bars(fig, fig.axes, front - 2, eye_z=eye_z, shape=img.shape)
    fig = viz.plot_mid_sagittal_row(images, eye_bar=True, note=viz.SIMULATION_NOTE)
    _check_slice_bars(fig, fig.axes, front - 2, eye_z=eye_z, shape=img.shape)
    # the phantom's slices are unchanged (an intact head only: eye_bars also finds a black removed region)
    for kwargs in (dict(note=viz.SIMULATION_NOTE), dict(eye_bar=False)):
        fig = viz.plot_mid_sagittal_row({"original": (img, affine)}, **kwargs)
        assert privacy.eye_bars(_pixels(fig)) == [], kwargs


def test_montage_of_real_faces_carries_an_eye_bar_on_every_slice(rng):
    from refacelib.report import viz

    img, _ = _face_head(rng)
    slices = [np.clip(img[30].T[::-1] / 100.0, 0, 1)] * 3
    fig = viz.plot_montage(slices, ["a", "b", "c"], ncols=3)
    _check_slice_bars(fig, fig.axes[:3], 50 + 45 - 2, eye_z=20 + 17, shape=img.shape)
    fig = viz.plot_montage(slices, ["a", "b", "c"], ncols=3, pixel_mm=2.0)
    _check_slice_bars(fig, fig.axes[:3], 50 + 45 - 2, eye_z=20 + 17, shape=img.shape)
    black_air = [np.where(sl > 0.5, sl, 0.0) for sl in slices]  # the white frame keeps the bar apart from it
    fig = viz.plot_montage(black_air, ["a", "b", "c"], ncols=3, pixel_mm=2.0)
    _check_slice_bars(fig, fig.axes[:3], 50 + 45 - 2, eye_z=20 + 17, shape=img.shape)
    fig = viz.plot_montage(slices, ["a", "b", "c"], ncols=3, note=viz.SIMULATION_NOTE)
    assert privacy.eye_bars(_pixels(fig)) == []


def test_sagittal_eye_bar_covers_the_profile_at_eye_level(rng):
    from refacelib.imaging.surface import head_mask

    img, _ = _face_head(rng)
    head = head_mask(img)[30].T[::-1]
    bar = privacy.sagittal_eye_bar(head, pixel_mm=2.0)
    rows, cols = np.nonzero(bar)
    eye_row = img.shape[2] - 1 - (20 + 17.5)
    assert abs(0.5 * (rows.min() + rows.max()) - eye_row) <= 1 and (rows.max() - rows.min() + 1) * 2.0 >= 30
    skin = max(np.nonzero(head[r])[0].max() for r in range(rows.min(), rows.max() + 1))
    assert cols.min() <= skin - 15 and cols.max() > skin  # from inside the face to the air in front of it
    assert not privacy.sagittal_eye_bar(np.zeros((8, 8), bool)).any()


# --- Executed notebooks: private absolute paths are scrubbed ---------------------------------------------


def _private_notebook(private):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    proj, dataset, folder, home, prefix = private
    nb = new_notebook(metadata={"papermill": {"input_path": f"{proj}/notebooks/01_cohort.py",
                                              "output_path": f"{folder}/notebooks/01_cohort.ipynb",
                                              "parameters": {"dataset": dataset}},
                                "kernelspec": {"name": "python3", "display_name": "Python 3"},
                                "interpreter": {"argv": [f"{prefix}/bin/python"]}})
    nb.cells = [
        new_markdown_cell(f"Data from `{dataset}`, code in {proj}/refacelib."),
        new_code_cell(f"load('{dataset}/participants.tsv')", execution_count=1, outputs=[
            new_output("stream", name="stdout", text=f"reading {dataset}/sub-01/anat/sub-01_T1w.nii.gz\n"),
            new_output("stream", name="stderr", text=f"{prefix}/lib/python3.11/site-packages/x.py:3: Warning\n"),
            new_output("display_data", data={"text/plain": f"PosixPath('{folder}/figures/a.png')",
                                             "text/html": f"<img src='file://{folder}/figures/a.png'>"},
                       metadata={"filenames": {"image/png": f"{folder}/figures/a.png"}}),
            new_output("execute_result", execution_count=1, data={"text/plain": f"'{home}/notes.txt'"}),
            new_output("error", ename="FileNotFoundError", evalue=f"[Errno 2] '{dataset}/sub-02'",
                       traceback=[f"\x1b[0;32m{prefix}/lib/python3.11/site-packages/pandas/io.py\x1b[0m",
                                  f"File {proj}/refacelib/io.py:12, in load",
                                  f"FileNotFoundError: '{dataset}/sub-02'"]),
        ]),
    ]
    nbformat.validate(nb)
    return nb


@pytest.fixture
def private(tmp_path, monkeypatch):
    import sys

    proj = tmp_path / "home" / "me" / "code" / "reface"
    dataset = tmp_path / "secret" / "hospital_study"
    folder = proj / "runs" / "tiny-hospital_study"
    monkeypatch.setenv("REFACE_PROJECT_ROOT", str(proj))
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    return str(proj), str(dataset), str(folder), str(tmp_path / "home" / "me"), sys.prefix


def test_scrub_notebook_replaces_every_private_path(private):
    import nbformat

    from refacelib.pipeline import book as pipeline

    proj, dataset, folder, home, prefix = private
    run = config.Run(profile="tiny", dataset=dataset, params={}, folder=__import__("pathlib").Path(folder))
    replacements = pipeline.private_replacements(run)
    assert replacements[dataset] == "<DATASET>" and replacements[folder] == "runs/tiny-hospital_study"
    nb = _private_notebook(private)
    pipeline.scrub_notebook(nb, replacements)
    text = nbformat.writes(nb)
    nbformat.validate(nbformat.reads(text, as_version=4))
    for secret in (proj, dataset, folder, home, prefix, "/secret/", "/home/me"):
        assert secret not in text, secret
    cell = nb.cells[1]
    assert cell.source == "load('<DATASET>/participants.tsv')"
    assert cell.outputs[0]["text"] == "reading <DATASET>/sub-01/anat/sub-01_T1w.nii.gz\n"
    assert cell.outputs[2]["data"]["text/html"] == "<img src='file://runs/tiny-hospital_study/figures/a.png'>"
    assert cell.outputs[3]["data"]["text/plain"] == "'~/notes.txt'"
    assert cell.outputs[4]["traceback"][1] == "File ./refacelib/io.py:12, in load"
    assert cell.outputs[4]["evalue"] == "[Errno 2] '<DATASET>/sub-02'"
    assert nb.metadata["papermill"]["parameters"]["dataset"] == "<DATASET>"
    assert nb.metadata["papermill"]["output_path"] == "runs/tiny-hospital_study/notebooks/01_cohort.ipynb"
    assert nb.cells[0].source == "Data from `<DATASET>`, code in ./refacelib."


def test_scrub_reaches_cell_metadata_keys_attachments_and_percent_encoded_paths(private):
    """The places a path hides besides plain strings: cell metadata, dictionary keys,
    attachment names, and percent-encoded links (a space in a folder name)."""
    import base64

    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    from refacelib.pipeline import book as pipeline

    proj, dataset, folder, home, prefix = private
    spaced = dataset + " 2"
    run = config.Run(profile="tiny", dataset=spaced, params={}, folder=__import__("pathlib").Path(folder))
    cell = new_markdown_cell("![x](attachment:a.png)")
    cell.metadata["provenance"] = {f"{spaced}/sub-01": f"file://{spaced.replace(' ', '%20')}/sub-01"}
    cell.attachments = {f"{spaced}/a.png": {"image/png": base64.b64encode(b"png").decode()}}
    nb = new_notebook(cells=[cell])
    nb.cells[0].metadata["link"] = "%2F".join(["", *spaced.strip("/").split("/")]).replace(" ", "%20")
    pipeline.scrub_notebook(nb, pipeline.private_replacements(run))
    text = nbformat.writes(nb)
    for secret in (spaced, spaced.replace(" ", "%20"), "secret", "hospital_study"):
        assert secret not in text, secret
    assert "<DATASET>/sub-01" in nb.cells[0].metadata["provenance"]


def test_scrub_keeps_the_phantom_and_needs_its_replacements(private):
    from refacelib.pipeline import book as pipeline

    proj, dataset, folder, home, prefix = private
    phantom = config.Run(profile="tiny", dataset=config.PHANTOM, params={}, folder=__import__("pathlib").Path(folder))
    assert config.PHANTOM not in pipeline.private_replacements(phantom)  # "phantom" is not a private path
    nb = _private_notebook(private)
    pipeline.scrub_notebook(nb, {})
    assert dataset in nb.cells[1].outputs[0]["text"]  # without replacements nothing changes: the test can fail


def test_overview_face_slice_carries_the_eye_bar_it_is_given():
    """The overview figure's mid-sagittal slice paints the eye bar of a real subject opaque black."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from refacelib.data import privacy
    from refacelib.report import overview

    head = np.zeros((100, 80), bool)
    head[5:95, 10:60] = True
    head[70:80, 60:66] = True  # nose
    bar = privacy.sagittal_eye_bar(head, pixel_mm=2.0)
    views = {k: np.zeros((5, 5)) for k in "abc"}

    def slice_axis(fig):
        return next(ax for ax in fig.axes if ax.get_title() == "facial voxels (red)")

    with_bar = overview.plot_overview(views, steps=["x", "y"], face_slice=head.astype(float), face_region=None,
                                      eye_bar=bar, corr=None)
    without = overview.plot_overview(views, steps=["x", "y"], face_slice=head.astype(float), face_region=None,
                                     corr=None)
    assert len(slice_axis(with_bar).images) == len(slice_axis(without).images) + 1
    painted = slice_axis(with_bar).images[-1].get_array()
    assert bool(np.array_equal(~np.ma.getmaskarray(painted), bar))
