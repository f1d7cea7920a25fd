"""Training ZoomEarth-style planners: data preparation, SFT and GRPO through TRL.

Modules:

* :mod:`zoomearth.train.rewards` -- format, box (IoU + Region-Guided) and answer rewards, with the
  reference method's semantics by default (boxes in its 512-long-side overview frame);
* :mod:`zoomearth.train.data` -- ``zoomearth train prepare``: LRS-GRO records + images to SFT
  sequences and GRPO prompts in one protocol profile (streamed, resumable);
* :mod:`zoomearth.train.chat` -- the ``agent`` profile's conversations, built by the planner's
  own functions from the graph's requests (the chat layout of inference);
* :mod:`zoomearth.train.config` -- the YAML configuration (pydantic);
* :mod:`zoomearth.train.sft` / :mod:`zoomearth.train.grpo` -- the TRL trainers (extra ``rl``);
  GRPO's two-stage rollout follows the reference's (stage 2 whenever the ground truth has a box,
  per-stage sampling, advantages without std scaling);
* :mod:`zoomearth.train.plots` -- loss and reward curves as PNG;
* :mod:`zoomearth.train.cli` -- the ``zoomearth train`` command.

Importing this package imports neither torch, transformers, trl nor peft.
"""

from __future__ import annotations

__all__: list[str] = []
