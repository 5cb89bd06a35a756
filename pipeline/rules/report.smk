# Summary of the run (training + evaluation metrics), logged onto the MLflow parent run as
# summary metrics; the parent run is then finished. `snakemake --report` adds the grids,
# loss curves and this table to the HTML report.


rule summarize:
    input:
        train=expand(str(rules.train_stage.output.metrics), stage=S.stages),
        evals=expand(str(rules.evaluate.output.metrics), stage=S.eval_stages),
        parent=rules.mlflow_parent.output[0],
        parent_params=rules.mlflow_parent_params.output[0],
    output:
        summary=f"{RUN}/summary.json",
        table=report(f"{RUN}/metrics.html", caption="../report/metrics_table.rst", category="Metrics"),
    params:
        uri=tracking_uri(),
        run=config["run"],
        preset=config["preset"],
    log:
        f"{RUN}/logs/summarize.log",
    conda:
        CONDA_TRAIN
    shell:
        "(python -m pipeline.summarize --run {params.run} --preset {params.preset} --train {input.train} "
        "--eval {input.evals} --out {output.summary} --table {output.table} && "
        "python -m stackgan track log-summary --tracking-uri {params.uri:q} --parent-run-id-file {input.parent} "
        "--metrics {output.summary} && "
        "python -m stackgan track finish-parent --tracking-uri {params.uri:q} --parent-run-id-file {input.parent}) "
        "> {log} 2>&1"
