"""Reports, plots and recipe comparisons; home of the `golf` command line."""
