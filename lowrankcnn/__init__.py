"""lowrankcnn: train CNNs with low-rank filters from scratch, and run them fast."""

import sys as _sys

try:
    from .deploy import deploy
    from .models import create_model, list_models, model_info, register_model
    from .profile import profile
except KeyboardInterrupt:  # Ctrl-C while torch loads: the command line ends with one line, not a traceback
    if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].rsplit("/", 1)[-1] == "lowrankcnn"):
        print("\nlowrankcnn: interrupted while starting", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__version__ = "0.2.0"
__all__ = ["create_model", "deploy", "list_models", "model_info", "profile", "register_model", "__version__"]
