"""lowrankcnn: train CNNs with low-rank filters from scratch, and run them fast."""

import signal as _signal
import sys as _sys

_CLI = bool(_sys.argv) and (_sys.argv[0] == "-m" or _sys.argv[0].rsplit("/", 1)[-1] == "lowrankcnn")
_interrupted = False


def _on_interrupt(signum, frame):  # noqa: ANN001, ANN202
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


if _CLI:  # remember a Ctrl-C even if some library swallows the KeyboardInterrupt while torch loads
    _signal.signal(_signal.SIGINT, _on_interrupt)
try:
    from .deployment import deploy
    from .errors import LowRankCNNError
    from .models import create_model, list_models, model_info, register_model
    from .profiling import profile
except BaseException:  # numpy, for one, turns an interrupted import into an ImportError
    if not (_interrupted or isinstance(_sys.exc_info()[1], KeyboardInterrupt)):
        raise
    _interrupted = True
if _CLI:
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if _interrupted:  # Ctrl-C while starting: the command line ends with one line, not a traceback
        print("\nlowrankcnn: interrupted while starting", file=_sys.stderr)
        raise SystemExit(130)
elif _interrupted:
    raise KeyboardInterrupt

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
