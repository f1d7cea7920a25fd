"""Reading analyst questions: the text understanding of the offline rules planner.

One concept per module, each a set of pure functions over data tables of regular expressions:

* :mod:`~zoomearth.agent.text.locations` -- location phrases (``top-right``, ``in the middle``)
  and phrases naming the whole image;
* :mod:`~zoomearth.agent.text.coordinates` -- pixel boxes, pixel points, map and lon/lat points
  written in a question, and their conversion to full-resolution pixels;
* :mod:`~zoomearth.agent.text.intents` -- tool commands (``remove clouds``, ``segment the
  roads``) and the offered tool that serves each;
* :mod:`~zoomearth.agent.text.arguments` -- a tool's arguments filled from its JSON Schema with
  what the question gives;
* :mod:`~zoomearth.agent.text.masking` -- the span masking the readers share;
* :mod:`~zoomearth.agent.text.dates` -- dates a question names, matched to a time stack's dates.

The planner that uses them is :class:`zoomearth.agent.backends.rules.RulesPlanner`, which also
re-exports their public names (and, for the adversarial-text test and benchmark, every compiled
pattern).
"""
