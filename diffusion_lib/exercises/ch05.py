"""Exercises of chapter 5 (registered with diffusion_lib.exercises)."""
from __future__ import annotations

import torch

from . import register
