"""Text conditioning (after StackGAN): c is the text embedding of a caption, or of a prompt.

Every caption line of the dataset is encoded once per dataset and encoder, and the table is
cached (:mod:`trainers.conditioning.text_cache`); a training step only looks rows up. A
sample whose caption holds several lines (several descriptions) gets one of them per step,
drawn from the loop's generator. Prompts at generation time go through the same encoder
and pooling (``phrases.py``).
The conditioning augmentation (mu, log sigma^2, a sample joined to z) lives in the
generator (``networks/common.py``); D is matching-aware (``loss.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainers.conditioning import phrases
from trainers.errors import GanrayError

if TYPE_CHECKING:
    import torch

    from trainers.conditioning.text_cache import CaptionTable

MAX_PROMPT_CHARS = 300


class PromptError(GanrayError, ValueError):
    """A prompt that cannot be encoded: not text, empty, or too long."""


def check_prompt(prompt: Any) -> str:
    """The prompt, stripped; PromptError when it is not a string, empty, or over 300 characters."""
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be text, got {type(prompt).__name__}")
    text = " ".join(prompt.split())
    if not text:
        raise PromptError("the prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS}")
    return text


def encode_prompts(encoder_name: str, pooling: str, prompts: list[str]) -> torch.Tensor:
    """(N, dim) embeddings of checked prompts, by the named encoder and pooling (``phrases.embed``)."""
    import torch

    return torch.from_numpy(phrases.embed(encoder_name, [check_prompt(p) for p in prompts], pooling))


class TextConditioning:
    """The ``text`` conditioning over one dataset's caption table."""

    kind = "text"
    matching_aware = True  # D also sees real images with mismatched text, as fakes (GAN-CLS / StackGAN)

    def __init__(self, table: CaptionTable):
        self.table = table
        self.row = {k: i for i, k in enumerate(table.keys)}

    @property
    def encoder_name(self) -> str:
        return self.table.encoder

    @property
    def pooling(self) -> str:
        return self.table.pooling

    @property
    def dim(self) -> int:
        return int(self.table.embeddings.shape[1])

    def _lines(self, i: int) -> tuple[int, int]:
        return int(self.table.offsets[i]), int(self.table.offsets[i + 1])

    def batch(self, samples: list[dict[str, Any]], gen: torch.Generator) -> torch.Tensor:
        """(N, dim): for each training sample, one of its caption lines' embeddings, drawn from gen."""
        import torch

        draws = torch.rand(len(samples), generator=gen, device=gen.device).cpu().tolist()
        rows = []
        for sample, u in zip(samples, draws):
            i = self.row.get(sample["key"])
            if i is None:
                raise GanrayError(f"sample {sample['key']!r} is not in the caption table of dataset "
                                  f"{self.table.dataset_hash[:12]} (the dataset changed under the job?)")
            start, end = self._lines(i)
            rows.append(start + min(int(u * (end - start)), end - start - 1))
        return torch.from_numpy(self.table.embeddings[rows])

    def request(self, prompt: str) -> torch.Tensor:
        """(dim,) for a user's prompt (PromptError when it is empty or too long)."""
        return encode_prompts(self.encoder_name, self.pooling, [prompt])[0]

    def first(self, n: int) -> torch.Tensor:
        """The first n samples' first caption lines in stored order (repeated to n): the sample grid's."""
        import torch

        rows = [int(self.table.offsets[i % len(self.table.keys)]) for i in range(n)]
        return torch.from_numpy(self.table.embeddings[rows])

    def draw(self, n: int, seed: int) -> torch.Tensor:
        """n caption-line embeddings drawn with replacement (seeded) from the whole table."""
        import numpy as np
        import torch

        idx = np.random.default_rng(seed).integers(0, len(self.table.embeddings), n)
        return torch.from_numpy(self.table.embeddings[idx])
