"""Datasets: VOC layout reader, embedded dataset generator, VOC/SBD download and preparation."""
