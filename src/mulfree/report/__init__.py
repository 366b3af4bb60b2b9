"""The fidelity report: the papers' claims beside our measurements (`mulfree report`).

from mulfree.report import build_report
build_report("report")          # report/README.md, report/report.json, report/*.png
"""

from mulfree.report.build import build_report

__all__ = ["build_report"]
