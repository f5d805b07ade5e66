"""python -m diffusion_lib.recipes: see diffusion_lib.recipes.cli."""

from .cli import main

main()
