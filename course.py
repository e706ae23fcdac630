#!/usr/bin/env python3
"""The course's one entry point, on Linux, macOS and Windows.

    python course.py lab            set up (first time only) and open JupyterLab on notebooks/
    python course.py test           set up (first time only) and run every test: unit tests, the
                                    notebooks under nbval, and the widgets in a real browser
    python course.py test --quick   unit tests only, without the slow and the browser ones (~2 min)
    python course.py quick          the same as 'test --quick'
    python course.py notebooks      only the notebooks under nbval (CI runs it a second time as on
                                    another CPU: ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=4)
    python course.py bench          run the benchmarks and refresh the README's performance table
                                    (adds the baselines dlib and OpenVINO, requirements-baselines.txt, once)

Anything after the command goes to JupyterLab, pytest or the benchmarks unchanged. `bash course.sh
...` runs this file with the same arguments. Needs Python 3.10+ with pip and nothing else: no
shell, no GNU tools. The environment lives in .venv (FACE_COURSE_VENV to change it); it is made
with the Python that runs this file ($PYTHON in course.sh). `lab` installs what the notebooks need
(the `course` extra); `test`, `quick` and `notebooks` add the test tools (the `test` extra) once.
FACE_COURSE_TORCH=cpu installs PyTorch's CPU-only wheels (no CUDA libraries: about 3 GB less on
Linux). A broken environment (its Python removed, pip missing, made by another Python) is rebuilt.
"""
# This file stays readable by old Pythons (2.7, 3.6: no f-strings, no annotations) so that they
# reach the version message below; the work is done by tools/course_launcher.py (Python 3.10+).
import os
import sys

MIN_PYTHON = (3, 10)

if sys.version_info < MIN_PYTHON:
    sys.stderr.write(
        "[course] Python %s is too old: the course needs %d.%d or newer. Run this file with a newer "
        "one, e.g. PYTHON=python3.12 bash course.sh lab (or: python3.12 course.py lab)\n"
        % ((sys.version.split()[0],) + MIN_PYTHON))
    sys.exit(2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
import course_launcher  # noqa: E402

course_launcher.USAGE_DOC = __doc__

if __name__ == "__main__":
    sys.exit(course_launcher.main())
