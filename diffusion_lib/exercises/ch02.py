"""Exercises of chapter 2 (registered with diffusion_lib.exercises)."""
from __future__ import annotations

import torch

from . import register
