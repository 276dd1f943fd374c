"""A chaos checker for mtcache's consistency contract, in the spirit of Jepsen's history checkers.

``cluster`` starts Redis, fault proxies, coordinators ("hosts") and worker processes; ``worker`` runs
a seeded workload and records every operation; ``schedule`` and ``faults`` decide and apply the
faults; ``checker`` judges the recorded history (pure functions); ``runner`` ties them together for
``test_chaos.py`` and ``bench/chaos.py``.
"""
