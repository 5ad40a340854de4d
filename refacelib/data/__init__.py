"""Input data: BIDS loading, input screening, pseudonyms, the phantom cohort and the template.
"""
from refacelib.data import bids, template, inputcheck, privacy, phantom
from refacelib.data.bids import *  # noqa: F401,F403
from refacelib.data.template import *  # noqa: F401,F403
from refacelib.data.inputcheck import *  # noqa: F401,F403
from refacelib.data.privacy import *  # noqa: F401,F403
from refacelib.data.phantom import *  # noqa: F401,F403

__all__ = [*bids.__all__, *template.__all__, *inputcheck.__all__, *privacy.__all__, *phantom.__all__]
