"""The policy editor's tools: policy cases, explain, diff, backtest, and the export generator."""
