"""Reporting: the summary CSV and the tables, always rebuilt from the run folders."""
