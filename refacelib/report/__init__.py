"""What a reader sees: key values, provenance, the paper's numbers, tables and figures (DataFrames in).
"""
from refacelib.report import paper, values, comparison, controls, viz, reid_plots, overview, bench_plots
from refacelib.report.paper import *  # noqa: F401,F403
from refacelib.report.values import *  # noqa: F401,F403
from refacelib.report.comparison import *  # noqa: F401,F403
from refacelib.report.controls import *  # noqa: F401,F403
from refacelib.report.viz import *  # noqa: F401,F403
from refacelib.report.reid_plots import *  # noqa: F401,F403
from refacelib.report.overview import *  # noqa: F401,F403
from refacelib.report.bench_plots import *  # noqa: F401,F403

from refacelib._utils.io import save_figure, save_table  # the writers of the chapters' figures and tables

__all__ = ["save_figure", "save_table", *paper.__all__, *values.__all__, *comparison.__all__, *controls.__all__, *viz.__all__, *reid_plots.__all__,
           *overview.__all__, *bench_plots.__all__]
