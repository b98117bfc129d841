"""Datasets: VOC layout reader, embedded dataset generator, VOC/SBD and COCO 2014 download and preparation."""
