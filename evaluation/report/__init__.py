"""Report: console tables and the HTML report, built from the analysis frames."""
