"""The page-cache evaluation (issue 8): guests serving file reads from a virtio disk.

A stand-in for the article's Cloudy/MediaWiki workload; run it with
``bench/eval_ebb.py``; see docs/evaluation.md.
"""
