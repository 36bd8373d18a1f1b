"""The paper's claims as a study: a study file, its runs over variants and seeds, the statistics
(intervals, power, Holm), the table, the plots and REPORT.md."""
