"""The overcommit evaluation (issue 8): the MOM article's Memknobs experiment on the lab.

Run it with ``bench/eval_ebb.py``; see docs/evaluation.md.
"""
