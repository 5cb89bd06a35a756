# Summary of the run (training + evaluation metrics), logged onto the MLflow parent run as
# summary metrics, and the run report (report.html: one offline page with the config, the
# curves, the grids, the metrics beside chance and the real-image ceiling, a verdict per
# stage and the MLflow links), uploaded onto the parent run; the parent run is then
# finished. `snakemake --report` adds the grids, curves and the run report to its own page.


rule summarize:
    input:
        unpack(report_inputs),
    output:
        summary=f"{RUN}/summary.json",
        report=report(f"{RUN}/report.html", caption="../report/run_report.rst", category="Run report"),
    params:
        uri=tracking_uri(),
        run=config["run"],
        preset=config["preset"],
        classifier=lambda w, input: (
            f"--classifier-report {input.classifier}" if "classifier" in input.keys() else ""
        ),
        index=lambda w, input: (
            f"--index {input.test_index}" if "test_index" in input.keys() else ""
        ),
    log:
        f"{RUN}/logs/summarize.log",
    conda:
        CONDA_TRAIN
    shell:
        "(python -m pipeline.summarize --run {params.run} --preset {params.preset} --train {input.train} "
        "--eval {input.evals} {params.index} --out {output.summary} && "
        "python -m pipeline.run_report --summary {output.summary} --pipeline-config {input.cfg} "
        "--train {input.train} --eval {input.evals} {params.classifier} "
        "--tracking-uri {params.uri:q} --parent-run-id-file {input.parent} --out {output.report} && "
        "python -m stackgan track finish-parent --tracking-uri {params.uri:q} --parent-run-id-file {input.parent} "
        "--metrics {output.summary} --artifact {output.report}) "
        "> {log} 2>&1"
