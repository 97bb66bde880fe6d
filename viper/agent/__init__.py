"""DreamerV3 (2023 release) in PyTorch: the agent VIPER trains, with pluggable reward sources.

Modules: ``dists`` (symlog, two-hot, unimix, straight-through), ``nets`` (LayerNorm+SiLU MLP, CNN
encoder/decoder), ``rssm``, ``world_model``, ``actor_critic``, ``replay``, ``rewards`` (reward sources and
replay insertion), ``agent`` (one update, acting), ``driver`` (env stepping), ``evaluation``, ``train`` (the
``train-agent``/``expert`` stages) and ``policy`` (a trained agent as a collection policy).
"""
