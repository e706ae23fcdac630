"""python -m benchmarks [--smoke] [--only SECTION,...] [--methods KEY,...] [--out FILE] [--readme FILE]

Runs the benchmarks, prints every figure beside its comparison, writes the results file
(default benchmarks/results.json) and regenerates benchmarks/RESULTS.md and the README's
performance table from it. `--only` reruns some sections and keeps the others' results.
`--methods` reruns some methods of the accuracy protocol and keeps the other methods' rows
(each row records when it was measured).
`--smoke` runs everything at tiny sizes (under a minute) into a temporary file: it checks
that the benchmarks still work and measures nothing worth quoting.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from helpers.runtime import REPO_ROOT

from . import report
from .common import loadavg, machine, now, run_section

SECTIONS = report.ORDER
HERE = Path(__file__).resolve().parent


def _runner(name: str):
    from importlib import import_module
    return import_module(f"benchmarks.{name}").run


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 seed, few epochs (< 1 min)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, from {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, help="results file (default benchmarks/results.json; smoke: a temp file)")
    p.add_argument("--readme", type=Path, help="README to update between the perf markers "
                   "(default README.md; smoke: none)")
    p.add_argument("--results-md", type=Path, help="full markdown report (default next to the results file)")
    p.add_argument("--seeds", type=int, default=5, help="accuracy protocol seeds")
    p.add_argument("--methods", help="accuracy: rerun only these method keys (comma-separated), keeping the "
                   "other rows of the previous accuracy run in the results file")
    p.add_argument("--course-repeats", type=int, default=1, help="times to run the whole course")
    p.add_argument("--report-only", action="store_true", help="only regenerate the markdown from the results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="bench-smoke-")) / "results.json"
        readme = args.readme
    else:
        out = args.out or HERE / "results.json"
        readme = args.readme or REPO_ROOT / "README.md"
    md = args.results_md or out.with_name("RESULTS.md")
    mode = "smoke" if args.smoke else "full"

    results = {"schema": 1, "mode": mode, "sections": {}}
    if out.exists():
        try:
            old = json.loads(out.read_text())
            if old.get("mode") == mode:
                results = old
        except (OSError, json.JSONDecodeError):
            print(f"[bench] {out} unreadable: starting a new results file")
    if not args.report_only:
        print(f"[bench] {mode} run of {', '.join(only)}; machine: {machine()}; load {loadavg()}", flush=True)
        kwargs = {"accuracy": {"seeds": args.seeds}, "course": {"repeats": args.course_repeats}}
        if args.methods:
            kwargs["accuracy"].update(methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                                      previous=results["sections"].get("accuracy"))
        t0 = time.perf_counter()
        for name in only:
            print(f"[bench] -- {name}", flush=True)
            results["sections"][name] = run_section(name, _runner(name), smoke=args.smoke, **kwargs.get(name, {}))
            results["updated"] = now()
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
            tmp.replace(out)  # written after every section: a crash keeps what was measured
        print(f"[bench] done in {time.perf_counter() - t0:.0f} s; results in {out}")
    md.write_text(report.results_markdown(results))
    print(f"[bench] report: {md}")
    if readme is not None:
        if report.update_readme(readme, results):
            print(f"[bench] performance table updated in {readme}")
    print()
    print(report.headline_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
