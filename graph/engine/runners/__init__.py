"""Runners: one file per backend (torch, onnx, ...) behind the runner protocol of base.py."""
