"""VIPER: video prediction models as rewards for reinforcement learning (Escontrela et al., 2023)."""

from viper import runtime

# Before anything imports MuJoCo or Prefect: headless rendering, project-local Prefect home, analytics off.
runtime.configure()

__version__ = "0.1.0"
