"""Training ZoomEarth-style planners: data preparation, SFT and GRPO through TRL.

Modules:

* :mod:`zoomearth.train.rewards` -- format, box (IoU + Region-Guided) and answer rewards, with the
  reference method's semantics by default;
* :mod:`zoomearth.train.data` -- ``zoomearth train prepare``: LRS-GRO records + images to SFT
  conversations and GRPO prompts (streamed, resumable);
* :mod:`zoomearth.train.config` -- the YAML configuration (pydantic);
* :mod:`zoomearth.train.sft` / :mod:`zoomearth.train.grpo` -- the TRL trainers (extra ``rl``);
* :mod:`zoomearth.train.plots` -- loss and reward curves as PNG;
* :mod:`zoomearth.train.cli` -- the ``zoomearth train`` command.

Importing this package imports neither torch, transformers, trl nor peft.
"""

from __future__ import annotations

__all__: list[str] = []
