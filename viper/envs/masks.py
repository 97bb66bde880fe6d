"""Per-game scoreboard masks for 64x64 Atari frames: False over the score (and its HUD band), True elsewhere.

The published Atari data ships ``mask_map.pkl`` (game -> mask multiplied into frames) because a video model
that sees the score rewards the agent for the score's look, not for play (the paper's Pong agent turned
erratic once the opponent scored). Ours are rectangles measured on our own 64x64 frames (ALE v5, area
resize): the rows where the score digits are drawn, full width, since nothing else is drawn in those rows.
``tests/test_atari_masks.py`` checks each against pixels that change when the game's score changes and
writes a picture of every game's masked frame.
"""

from __future__ import annotations

import numpy as np

from viper.errors import ViperError

# Game -> rectangles (row_start, row_stop, col_start, col_stop) to blank, in 64x64 frame pixels.
SCORE_BOXES: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "assault": ((0, 4, 0, 64),),  # score at the top
    "atlantis": ((56, 64, 0, 64),),  # score in the ground band at the bottom
    "boxing": ((0, 8, 0, 64),),  # both scores and the round clock above the ring
    "defender": ((52, 64, 0, 64),),  # score, lives and smart bombs in the bottom panel
    "freeway": ((0, 4, 0, 64),),  # both chickens' scores above the top pavement
    "kangaroo": ((55, 64, 0, 64),),  # lives, score and bonus timer in the black bottom band
    "pong": ((0, 7, 0, 64),),  # both scores above the top wall
    "zaxxon": ((0, 6, 0, 64),),  # score above the playfield
}


def scoreboard_mask(task: str, size: int = 64) -> np.ndarray:
    """bool (size, size): True where pixels are kept, False over ``task``'s scoreboard (``atari/<game>``)."""
    assert size == 64, f"scoreboard boxes are defined on 64x64 frames, got size {size}"
    game = task.removeprefix("atari/")
    if game not in SCORE_BOXES:
        raise ViperError(f"no scoreboard mask for {task!r}; games with one: {', '.join(SCORE_BOXES)}")
    mask = np.ones((size, size), dtype=bool)
    for row0, row1, col0, col1 in SCORE_BOXES[game]:
        mask[row0:row1, col0:col1] = False
    return mask


def apply_mask(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Frames uint8 (..., 64, 64, 3) with masked pixels set to 0 (black), as the published masks do."""
    assert frames.shape[-3:-1] == mask.shape, f"frames {frames.shape} do not match mask {mask.shape}"
    return frames * mask[..., None].astype(frames.dtype)
