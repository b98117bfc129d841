"""icd-pipeline: image-level weakly-supervised semantic segmentation with ICD (CVPR 2020)."""

__version__ = "0.1.0"
# Bumped when the maps/seeds a stage writes would change for the same inputs.
METHOD_VERSION = "icd-1"
