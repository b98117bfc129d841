"""Networks: backbones (``backbones.build_backbone``), the ICD model (``icd``), DeepLab heads."""

from .backbones import BACKBONES, Backbone, build_backbone
from .icd import CheckpointError, ICDModel, build_icd_model, load_icd_model, save_icd_checkpoint

__all__ = ["BACKBONES", "Backbone", "build_backbone", "ICDModel", "CheckpointError", "build_icd_model",
           "load_icd_model", "save_icd_checkpoint"]
