"""Benchmarks of the course: `python -m benchmarks` (or `bash course.sh bench`).

Each module measures one figure against its comparison in the same run and returns a
`common.Section`; `__main__` runs them, writes `benchmarks/results.json` and regenerates
`benchmarks/RESULTS.md` and the README's performance table from that file.

  course      every notebook executed headless in order: wall time, kernel peak memory
  head_fit    frozen head fit on cached features vs the guide's backbone-every-epoch loop
  extraction  the helpers' feature extractor vs a plain loop and the fastest recipe found
  accuracy    the accuracy protocol on the offline ORL faces (methods side by side, seeds)
  scaling     head fit and extraction time and memory from 100 to 10,000 items
"""
