"""StackGAN pipeline: CUB (or its synthetic twin) -> shards -> Stage-I -> Stage-II -> evaluation -> report.

    snakemake --profile cluster/local                        # embedded default: demo preset, local
    snakemake --profile cluster/slurm --config preset=paper  # paper scale on a SLURM cluster
    snakemake --profile cluster/local --report results/demo/report.html

Configuration: pipeline/config/default.yaml selects a preset (pipeline/config/presets/);
--configfile / --config values are deep-merged on top and the result is validated against
pipeline/schemas/config.schema.yaml (unknown keys are errors) before any job runs.
"""

import os

from snakemake.utils import min_version

min_version("8.0")


configfile: os.path.join(workflow.basedir, "pipeline/config/default.yaml")


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/report.smk"


rule all:
    input:
        f"{RUN}/summary.json",
    default_target: True
