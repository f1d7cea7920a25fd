"""The parts of the planner-reply parser; the public entry point is :mod:`zoomearth.agent.parsing`.

* :mod:`~zoomearth.agent.reply.records` -- the value types the parser returns (:class:`Problem`,
  :class:`ZoomRequest`, :class:`ToolCallRequest`, :class:`ParsedResponse`, :class:`TurnDecision`)
  and the stable :class:`ProblemCode` values;
* :mod:`~zoomearth.agent.reply.messages` -- the messages written for the model, the limits that
  keep the parser linear and its feedback short, and the problem collector;
* :mod:`~zoomearth.agent.reply.lenient_json` -- the lenient JSON reader (common model slips
  accepted);
* :mod:`~zoomearth.agent.reply.tags` -- ``<think>``/``<answer>``/``<tool_call>`` tags paired into
  blocks;
* :mod:`~zoomearth.agent.reply.zooms` -- ``bbox_2d`` zoom objects;
* :mod:`~zoomearth.agent.reply.tool_calls` -- the calls of ``<tool_call>`` blocks, repaired where
  possible.
"""
