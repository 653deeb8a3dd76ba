"""Chaos suite (dev and test only): the app driven black-box through faults, kills and duplicates.

``benchmarks/chaos.py`` is the long run, ``tests/test_chaos.py`` the short one; docs/reliability.md
has the figures. Parts: :mod:`.proxy` (fault-injecting Power BI proxy), :mod:`.env` (Azurite,
simulator, runtimes, lake), :mod:`.scenarios`, :mod:`.figures` (what counts as lost, stuck...),
:mod:`.runner`.
"""
