"""The configuration's sections: one frozen dataclass per pipeline stage, with the published defaults.

Each field's docstring is its documentation (``viper <stage> --help`` and ``viper config`` print it). A field
with a fixed set of values is typed ``Literal[...]``, so a mistyped value is refused when the configuration
loads, before any stage touches its outputs. Numbers are never negative; a ``Count`` (size, count or interval)
is at least 1 and a field typed with a ``Range`` stays inside it (the value types: ``viper.fields``). Loading,
presets and validation live in ``viper.config``, which re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from viper.fields import DMC_TASKS, Count, Device, Fraction, Range, Task


@dataclass(frozen=True)
class CollectConfig:
    """Expert video collection into the Zarr store (stage ``collect``)."""

    suite: Literal["dmc", "atari"] = "dmc"
    """Environment suite: ``dmc`` or ``atari``; also names the store ``<data_dir>/videos/<suite>.zarr``."""
    tasks: tuple[Task, ...] = DMC_TASKS
    """Tasks to collect, full names ``<suite>/<task>`` (e.g. ``dmc/cartpole_balance``)."""
    policy: str = "expert"
    """Behaviour policy: ``expert`` (scripted), ``random``, ``noisy:<epsilon>`` or ``checkpoint:<path>``; or
    ``published``: import the published npz dataset placed in ``data/published/<suite>/`` instead of rolling out
    (``viper.paths.published_dir``; preset ``published``)."""
    expert_settings: tuple[str, ...] = ()
    """Retune scripted experts for collection, ``<task>:<attribute>=<number>`` (e.g.
    ``dmc/cartpole_swingup:pump_gain=4.0``; defaults in ``viper.experts.dmc_scripted``). Applies to ``expert`` and
    ``noisy:<eps>`` here, and to reward-eval's noisy experts, so they are noisy versions of the expert that made the
    videos."""
    episodes_per_task: Count = 1000
    """Episodes rolled out per task before filtering (paper: keep the top 50 of 1000)."""
    episode_env_steps: int = 500
    """Agent steps per episode, after action repeat (DMC: 1000 physics steps / repeat 2)."""
    action_repeat: Count = 2
    """Environment steps per agent action (DMC 2, Atari frame skip 4); recorded in the store."""
    workers: Count = 2
    """Parallel environment worker processes."""
    stall_seconds_per_step: float = 1.0
    """With several workers: after max(600 s, this x episode_env_steps) without a finished rollout (a bound on one
    episode: 1 s per agent step is >= 10x a CPU policy's pace) the workers are presumed hung, killed, and their
    episodes rolled out again (twice at most). 0 waits forever."""
    seed: int = 0
    """Base seed; episode i of task t is seeded deterministically from (seed, t, i)."""
    keep_return_percentile: Annotated[float, Range(0, 100)] = 90.0
    """Keep episodes whose return is at or above this percentile of the collected returns (0 keeps all)."""
    drop_first_frames: int = 50
    """Frames dropped from the start of each kept episode (published DMC filter)."""
    max_episodes_per_task: Count = 500
    """Cap on kept episodes per task."""
    test_fraction: Fraction = 0.05
    """Fraction of kept episodes assigned to the test split (published: 95/5)."""
    chunk_frames: Count = 32
    """Frames per compressed Zarr chunk, the unit of decoding (choice: benchmarks/results/store.md)."""
    shard_frames: Count = 4096
    """Frames per Zarr shard file; few large files keep DVC hashing fast."""
    manifest: str = ""
    """With policy ``published``: sha256sum-format manifest every imported file must match (empty: no check)."""
    fast_render: bool = True
    """Turn off shadows/reflections and shrink the offscreen buffer (several times faster, same content). The
    agents' envs, reward-eval and evaluate render the same way, so the reward model scores frames like its
    training videos; set False with the published datasets (rendered with MuJoCo's defaults)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """VQ-GAN frame tokenizer (stages ``train-tokenizer`` and ``tokenize``)."""

    base_channels: Count = 128
    """Channels of the first encoder level."""
    channel_mult: tuple[Count, ...] = (1, 2, 2, 2)
    """Channel multiplier per level; len-1 downsamplings (DMC 4 levels -> 8x8, Atari 3 -> 16x16)."""
    res_blocks: int = 1
    """Residual blocks per encoder level (the decoder uses one more)."""
    embed_dim: Count = 64
    """Latent / codebook vector dimension."""
    codebook_size: Count = 256
    """Number of codebook entries K (paper text: 1024 for DMC; released config: 256)."""
    commitment_weight: float = 0.25
    """Weight of the commitment term ||z - sg(e)||^2."""
    kmeans_init: bool = False
    """Initialise the codebook by k-means on the first batch (off in the published code)."""
    dead_code_restart: bool = False
    """Re-seed unused codes from encoder outputs (off in the published code)."""
    dead_code_every_grad_steps: Count = 200
    """Window of updates over which a code must be used once, else it is re-seeded (with dead_code_restart)."""
    recon_loss: Literal["l1", "mse"] = "l1"
    """Pixel loss: ``l1`` (published) or ``mse`` (CPU prototype; learns small objects sooner without GAN/LPIPS)."""
    perceptual_weight: float = 0.1
    """LPIPS(VGG16) weight; needs ``lpips_weights_path`` (no downloads here), otherwise switched off."""
    lpips_weights_path: str = ""
    """Local LPIPS-VGG weights file; empty disables the perceptual term with one log line."""
    gan_weight: float = 0.1
    """Non-saturating GAN generator loss weight."""
    gan_start_grad_steps: int = 0
    """Updates before the GAN terms switch on."""
    r1_weight: float = 1.0
    """R1 gamma: gamma/2 * batch-mean ||grad_x D(x)||^2 (batch-size free; published 1e8 at batch 128 = ~1.0)."""
    r1_every_grad_steps: Count = 1
    """Lazy R1: penalise every N discriminator updates, scaled by N (StyleGAN2 uses 16; published code 1)."""
    disc_fake: Literal["updated", "reused"] = "updated"
    """The discriminator's fake images: ``updated`` (released: the just-updated VQ-GAN reconstructs the batch
    again, one more forward pass) or ``reused`` (the generator step's reconstruction; saves that pass)."""
    disc_base_channels: Count = 32
    """Discriminator channels at full resolution."""
    disc_max_channels: Count = 512
    """Discriminator channel cap."""
    lr: float = 1e-4
    """AdamW learning rate (both networks)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay (optax.adamw's default, which the published code uses)."""
    warmup_grad_steps: int = 1000
    """Linear learning-rate warm-up updates."""
    batch_size: Count = 128
    """Frames per update (over all processes)."""
    train_grad_steps: int = 1_000_000
    """Total optimiser updates."""
    log_every_grad_steps: Count = 100
    """Updates between training-loss log lines (losses averaged over ranks at that update)."""
    eval_every_grad_steps: Count = 5000
    """Updates between evaluations on the test split."""
    eval_frames: Count = 512
    """Test-split frames (spread evenly over the test episodes) reconstructed at each evaluation."""
    checkpoint_every_grad_steps: Count = 5000
    """Updates between checkpoints."""
    keep_checkpoints: Count = 3
    """Checkpoint folders kept."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    seed: int = 0
    """Seed for initialisation and batch sampling."""
    tokenize_batch_frames: Count = 256
    """Frames encoded per forward pass by the ``tokenize`` stage."""


@dataclass(frozen=True)
class PriorConfig:
    """VideoGPT prior over token videos (stage ``train-videogpt``)."""

    d_model: Count = 256
    """Transformer width."""
    layers: Count = 8
    """Transformer blocks."""
    heads: Count = 8
    """Attention heads."""
    mlp_dim: Count = 1024
    """Hidden units of each MLP."""
    dropout: Fraction = 0.1
    """Dropout on attention and residual branches."""
    seq_len: Count = 16
    """Frames per training window (after subsampling)."""
    frame_skip: Count = 1
    """Stride between window frames in raw env steps; a window spans 1 + (seq_len-1)*frame_skip frames."""
    class_conditional: bool = True
    """Condition every LayerNorm on the one-hot task id (DMC yes, Atari no)."""
    batch_size: Count = 64
    """Windows per update, split evenly over tasks."""
    lr: float = 1e-4
    """AdamW learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW weight decay: 1e-4 as released (its ``get_optimizer`` always builds ``optax.adamw``, whose default
    this is, whatever the config's ``optimizer`` says)."""
    ema_decay: Fraction = 0.9999
    """EMA decay of the weights used for scoring."""
    train_grad_steps: int = 800_000
    """Total optimiser updates."""
    eval_every_grad_steps: Count = 5000
    """Updates between evaluations (bits per token on the test split)."""
    checkpoint_every_grad_steps: Count = 5000
    """Updates between checkpoints."""
    keep_checkpoints: Count = 3
    """Checkpoint folders kept (the best by eval NLL is kept besides)."""
    log_every_grad_steps: Count = 100
    """Updates between training-loss log lines."""
    eval_windows_per_task: Count = 64
    """Test-split windows per task in each evaluation (evenly spaced, the same ones every time)."""
    picture_context_frames: int = 4
    """Context frames of the open-loop prediction pictures (capped at seq_len - 1)."""
    picture_windows_per_task: Count = 1
    """Test windows per task drawn as prediction-vs-truth pictures at each evaluation."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    seed: int = 0
    """Seed for initialisation and window sampling."""


@dataclass(frozen=True)
class RewardConfig:
    """The VIPER reward model: tokenizer + prior log-likelihoods as per-step rewards."""

    mode: Literal["joint", "conditional"] = "joint"
    """``joint`` (released code: sum of log p of every frame in the window) or ``conditional`` (paper)."""
    windows_per_batch: Count = 64
    """Windows scored per forward pass (bounds memory)."""
    encode_batch_frames: Count = 256
    """Frames per tokenizer call when encoding an episode (bounds memory)."""
    checkpoint: Literal["released", "latest", "best"] = "released"
    """Prior checkpoint to score with: ``released`` (the released script keeps only checkpoints saved while its
    raw weights' latest eval loss was the best so far, and scores with their EMA weights), ``latest`` (the last
    one), ``best`` (lowest EMA eval NLL)."""
    weights: Literal["ema", "raw"] = "ema"
    """Prior weights that score: ``ema`` (published) or ``raw`` (trained weights; short runs with a lagging EMA)."""
    device: Device = "auto"
    """``auto`` (CUDA if present), ``cpu``, ``mps`` (Apple GPUs) or ``cuda[:i]``."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""


@dataclass(frozen=True)
class AgentConfig:
    """DreamerV3 agent (stages ``expert`` and ``train-agent``)."""

    tasks: tuple[Task, ...] = DMC_TASKS
    """Tasks to train agents on."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds per task."""
    reward: Literal["task", "viper"] = "viper"
    """Reward source: ``task`` (environment reward, the oracle) or ``viper`` (video likelihood)."""
    size: Literal["tiny", "XS", "S", "M", "L", "XL"] = "S"
    """Model size XS/S/M/L/XL (GRU 256/512/1024/2048/4096, CNN 24/32/48/64/96, MLP 256/512/640/768/1024);
    ``tiny`` (GRU 128, CNN 8, 16x16 latents) is an unpublished CPU-test size."""
    env_steps: Count = 5_000_000
    """Agent steps to train for, after action repeat (env frames = env_steps * action_repeat): 10M frames, the
    length of the published DMC curves (the released run has no end, ``run.steps: 1e10``); ``paper_atari``: 2.5M
    at action repeat 4, the published Atari curves' 10M frames."""
    action_repeat: Count = 2
    """Environment steps per agent action."""
    envs: Count = 4
    """Parallel environments."""
    parallel_envs: bool = True
    """Step the environments in worker processes (with envs > 1); False steps them in this process."""
    episode_env_steps: int = 0
    """Agent steps per episode; 0 takes the suite's episode over ``action_repeat`` (DMC 1000 control steps: 500 at
    repeat 2; Atari 108,000 frames: 27,000 at repeat 4)."""
    train_ratio: float = 64.0
    """Replayed steps per env step: updates = env_steps * train_ratio / (batch_size * batch_length)."""
    batch_size: Count = 16
    """Sequences per update."""
    batch_length: Count = 64
    """Steps per replayed sequence (with reward viper: see ``viper_batch_length``); the train ratio counts it."""
    viper_batch_length: int = 0
    """Steps per replayed sequence with reward viper; 0: the released code's, chunk - context (49 = 64 - 15).

    The released relabelling replay stores every (64 - 16 + 1)-step run of scored steps as one item, so VIPER
    agents train on 16 x 49 batches while the train ratio still counts 16 x 64 (as here). Set it to
    ``batch_length`` to replay full-length sequences instead."""
    replay_capacity_steps: Count = 1_000_000
    """Replay buffer capacity in steps."""
    model_lr: float = 1e-4
    """World-model Adam learning rate."""
    actor_lr: float = 3e-5
    """Actor Adam learning rate."""
    critic_lr: float = 3e-5
    """Critic Adam learning rate."""
    model_eps: float = 1e-8
    """World-model Adam epsilon."""
    actor_critic_eps: float = 1e-5
    """Actor and critic Adam epsilon."""
    model_grad_clip: float = 1000.0
    """World-model gradient clipping by global norm."""
    actor_critic_grad_clip: float = 100.0
    """Actor and critic gradient clipping by global norm."""
    imag_horizon: Count = 15
    """Imagination horizon in steps."""
    discount_horizon: Annotated[float, Range(1, above=True)] = 333.0
    """Discount = 1 - 1/discount_horizon (above 1: a discount of 0 leaves nothing to weight imagined states by)."""
    return_lambda: Fraction = 0.95
    """Lambda of the lambda-returns."""
    actor_entropy: float = 3e-4
    """Actor entropy regulariser."""
    expl_weight: float = 1.0
    """Weight beta of the Plan2Explore disagreement advantage with reward viper (published 1; 0 drops it)."""
    density_weight: float = 1.0
    """Weight of the VIPER (density) advantage; advantages are mixed as w_k / sum(w) (published 1 and 1)."""
    disag_models: Annotated[int, Range(2)] = 8
    """Plan2Explore ensemble members predicting the next stochastic state (published 8)."""
    expl_lr: float = 1e-4
    """Adam learning rate of the disagreement ensemble (published ``expl_opt``)."""
    expl_eps: float = 1e-5
    """Adam epsilon of the disagreement ensemble."""
    expl_grad_clip: float = 100.0
    """Gradient clipping (global norm) of the disagreement ensemble."""
    context_steps: int = 15
    """Published context steps per replay chunk (16 - 1); reward viper uses its model's seq_len * frame_skip - 1."""
    eval_every_env_steps: Count = 10_000
    """Agent steps between evaluation episodes."""
    eval_episodes: int = 1
    """Episodes per evaluation."""
    eval_sample: bool = True
    """Evaluation samples actions as the 2023 code does; False takes the policy's mode (mean)."""
    log_every_env_steps: Count = 1000
    """Agent steps between logged averages of the training losses."""
    checkpoint_every_env_steps: Count = 10_000
    """Agent steps between checkpoints."""
    keep_checkpoints: Count = 2
    """Checkpoint folders kept."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU). The released agent computes in float16 with a dynamic loss scale
    that skips non-finite updates; bf16 has float32's range, so no loss scale is needed."""
    compile: bool = False
    """Compile the batched networks with torch.compile (CUDA only; the loops over time stay eager)."""
    compile_loops: bool = False
    """Compile the per-step functions of the observe (posterior) and imagination loops with torch.compile (any
    device; the Python loops stay, each step's many small kernels fuse). Same maths, other random streams. Meant
    for CUDA, where the loops are launch-bound; on this CPU it is no faster (tiny: 3.8 vs 3.4 CPU s/update)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode for ``compile`` and ``compile_loops``: ``default``, ``reduce-overhead`` (adds CUDA
    graphs on CUDA: each loop step replays as one launch; ignored on the CPU), ``max-autotune`` or
    ``max-autotune-no-cudagraphs``."""
    cuda_graph: bool = True
    """Replay each whole update (world model, ensemble, imagination, actor and critic steps) from one CUDA graph,
    captured after 3 eager warm-up updates (CUDA only; ignored on the CPU). Same maths, other random streams; Adam
    runs with ``capturable=True`` and autocast without its weight cache. Combines with ``compile`` (default mode),
    not with ``compile_mode=reduce-overhead``. On an H100 at size S: 20.3 updates/s against 3.1 eager
    (benchmarks/results/gpu.md); a capture that fails warns and stays eager. ``false`` runs every update eagerly."""
    device: Device = "auto"
    """``auto`` (CUDA if present), ``cpu``, ``mps`` (Apple GPUs) or ``cuda[:i]``."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Reward diagnostics (``reward-eval``) and agent evaluation (``evaluate``)."""

    reward_eval_episodes: Count = 10
    """Episodes per category (held-out expert, each noisy epsilon, random) scored per task."""
    noisy_epsilons: tuple[Fraction, ...] = (0.25, 0.5, 0.75)
    """Random-action probabilities of the noisy-expert episodes."""
    agent_episodes: Count = 10
    """Evaluation episodes per trained agent."""
    agent_sample: bool = True
    """Agents sample their actions, as in the training episodes whose returns the released code reports;
    ``false`` plays each action distribution's mode."""
    video_episodes: int = 1
    """Episodes saved as GIF per trained agent."""
    seed: int = 1000
    """Seed of evaluation episodes (kept apart from training seeds)."""
