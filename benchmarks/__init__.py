"""The benchmark scripts, importable as ``benchmarks.<script>`` (tests use them so) and run
as ``python benchmarks/<script>.py``."""
