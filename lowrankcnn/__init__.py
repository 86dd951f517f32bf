"""lowrankcnn: train CNNs with low-rank filters from scratch, and run them fast."""

import os as _os
import signal as _signal
import sys as _sys

_CLI = bool(_sys.argv) and (_sys.argv[0] == "-m" or _sys.argv[0].rsplit("/", 1)[-1] == "lowrankcnn")
_interrupted = False


def _note_interrupt(signum, frame):  # noqa: ANN001, ANN202
    global _interrupted
    _interrupted = True


# On the command line, a Ctrl-C while torch loads is only noted, and acted on once the imports are done: a
# KeyboardInterrupt raised inside torch's import can abort the interpreter (from C++) or be turned into an
# ImportError by numpy.
if _CLI:
    _signal.signal(_signal.SIGINT, _note_interrupt)
from .deployment import deploy  # noqa: E402
from .errors import LowRankCNNError  # noqa: E402
from .models import create_model, list_models, model_info, register_model  # noqa: E402
from .profiling import profile  # noqa: E402

if _CLI:
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if _interrupted:  # the command line ends with one line, not a traceback; nothing has been written yet
        print("\nlowrankcnn: interrupted while starting", file=_sys.stderr, flush=True)
        _os._exit(130)

__version__ = "0.2.0"
__all__ = [
    "LowRankCNNError",
    "create_model",
    "deploy",
    "list_models",
    "model_info",
    "profile",
    "register_model",
    "__version__",
]
