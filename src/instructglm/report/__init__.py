"""``report``: one self-contained HTML page for a run."""

from instructglm.report.report import ReportConfig, write_report

__all__ = ["ReportConfig", "write_report"]
