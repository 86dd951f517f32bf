"""lowrankcnn: train CNNs with low-rank filters from scratch, and run them fast."""

from .deploy import deploy
from .models import create_model, list_models, model_info, register_model
from .profile import profile

__version__ = "0.2.0"
__all__ = ["create_model", "deploy", "list_models", "model_info", "profile", "register_model", "__version__"]
