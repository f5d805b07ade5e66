"""Exercises of chapter 1 (registered with diffusion_lib.exercises)."""
from __future__ import annotations

import torch

from . import register
