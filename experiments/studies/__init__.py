"""Studies: one experiment per claim of the design text, each able to come out either way.

A study is a sweep plus a report. The sweep is declared with `get_sweep` in a config (so the
runner's `--sweep`, `--sweep_parallel`, `--sweep_index` and `--sweep_list` apply, and a rerun
resumes: finished points are skipped, the others continue from their checkpoints); each arm (a
setting under test) runs over several seeds, the seed being one of the swept config paths. The
report step (`experiments.studies.report`) reads the points' results from the sweep's workdir,
averages each arm over its seeds and writes the study's page.

Run one as

    python -m experiments.studies.<name> [--quick] [--out DIR]

which trains the sweep's points not yet done and then writes `DIR/<name>.md` (a table of mean ±
std over seeds per arm and metric, with the exact command, the hardware, the wall time and the
seeds) and `DIR/<name>.png`; DIR defaults to `docs/studies`. `--quick` runs every arm for a few
steps of a tiny model and writes the same files, marked as smoke-test output that says nothing
about the claim.
"""
