"""A view of a name -> array mapping under a name prefix.

Layers address their parameters by local Hugging Face names (``"self.query.weight"``); the
model hands them ``Prefixed(params, "encoder.layer.3.attention.")`` so that the one ordered
dictionary of full names stays the single store of parameters and gradients.
"""


class Prefixed:
    """``Prefixed(m, "a.")["w"] is m["a.w"]``; reads, writes and ``in`` go to the parent mapping."""

    __slots__ = ("mapping", "prefix")

    def __init__(self, mapping, prefix: str):
        self.mapping, self.prefix = mapping, prefix

    def __getitem__(self, key):
        return self.mapping[self.prefix + key]

    def __setitem__(self, key, value):
        self.mapping[self.prefix + key] = value

    def __contains__(self, key):
        return self.prefix + key in self.mapping

    def __repr__(self):
        return f"Prefixed({self.prefix!r})"
