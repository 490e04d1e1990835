"""Reading finished runs: bar metrics, the paper's evaluation protocol (CLIP score,
R-precision), judge sheets, HTML reports and run-directory discovery.

``stage2/`` makes runs and never imports this package; the command lines
(``train``, ``sweep``, ``evaluate``, ``report``) call it after a run.
"""
