"""What every other package stands on: atomic writes, output file names, feature-map arithmetic, provenance,
the import closure behind a result, child processes, the command-line error helper, plots without a display."""
