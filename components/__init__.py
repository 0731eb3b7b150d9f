"""KFP v2 components of the lcron pipeline: one thin adapter per step.

Each component is a lightweight ``@dsl.component`` whose body imports the ``lcron``
library, calls one library function and records its outputs as typed artifacts. The body
runs in the project image (``components.common``), which has lcron and kfp installed, so
no package is installed at run time (``install_kfp_package=False``).
"""

from components.evaluate import evaluate
from components.ingest import fingerprint, ingest
from components.preprocess import preprocess
from components.report import report
from components.serving import serving
from components.train import train

__all__ = ["fingerprint", "ingest", "preprocess", "train", "evaluate", "serving", "report"]
