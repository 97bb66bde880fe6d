"""The VIPER reward model: a tokenizer + VideoGPT prior pair scoring frames as per-step rewards."""

from viper.reward.model import MODES, VideoReward

__all__ = ["MODES", "VideoReward"]
