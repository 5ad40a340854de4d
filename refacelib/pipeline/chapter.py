"""The first cell of a chapter: one call that opens its run and states what the reader is told."""
from __future__ import annotations

import time
from typing import NamedTuple

from myst_nb import glue

from refacelib.data.privacy import FacePolicy, face_policy
from refacelib.pipeline.config import Run, open_run
from refacelib.pipeline.refacing import RefacingSetup, setup
from refacelib.report.viz import SIMULATION_NOTE

__all__ = ["Chapter", "dataset_name", "start_chapter"]


class Chapter(NamedTuple):
    """What a chapter's cells share (unpack it: ``run, note, faces, chapter_start, study = ...``)."""

    run: Run
    #: The caption note of every figure: :data:`~refacelib.report.viz.SIMULATION_NOTE` on the phantom.
    note: str | None
    #: Whether faces may be shown (``faces.show``), and with an eye bar (``faces.eye_bar``).
    faces: FacePolicy
    #: ``time.time()`` when the chapter started, for its provenance footer.
    started: float
    #: The cohort, its defacing stage and the cascade configuration (``study=True``), else None.
    study: RefacingSetup | None


def dataset_name(run: Run) -> str:
    """How the pages name the dataset of a run (glued as ``dataset_name``).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> dataset_name(SimpleNamespace(is_phantom=True))
    'the phantom cohort (simulated)'
    """
    return "the phantom cohort (simulated)" if run.is_phantom else "a user-supplied dataset"


def start_chapter(profile: str, dataset: str, publish_faces=False, *, study: bool = False) -> Chapter:
    """Open the run of ``profile`` on ``dataset``, glue ``dataset_name`` and resolve the study if asked.

    ``publish_faces`` decides whether a real subject's face is shown
    (:func:`refacelib.data.privacy.face_policy`); ``study`` loads the cohort and
    its cached defacing stage (:func:`refacelib.pipeline.refacing.setup`).
    """
    run = open_run(profile, dataset)
    started = time.time()
    glue("dataset_name", dataset_name(run), display=False)
    return Chapter(run=run, note=SIMULATION_NOTE if run.is_phantom else None,
                   faces=face_policy(run.is_phantom, publish_faces), started=started,
                   study=setup(run) if study else None)
