"""Evaluation: metrics, LPIPS, result sources, the PD plane, the HTML report, diagnostics."""
