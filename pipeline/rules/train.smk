# MLflow parent run, per-stage run configs, and the two training stages (DDP launch).
# Resumable training state lives in params.workdir, which is deliberately NOT a declared
# output: Snakemake deletes declared outputs of failed jobs, and a retried or requeued
# job must find its checkpoints. Editing code under stackgan/ does not retrain; force it
# with -R train_stage1 (or change the run name).


rule mlflow_parent:
    output:
        f"{RUN}/mlflow/parent_run_id.txt",
    params:
        uri=tracking_uri(),
        experiment=config["mlflow"]["experiment"],
        run=config["run"],
        preset=config["preset"],
        dataset=config["data"]["source"],
    log:
        f"{RUN}/logs/mlflow_parent.log",
    conda:
        CONDA_TRAIN
    shell:
        "python -m stackgan track start-parent --tracking-uri {params.uri:q} --experiment {params.experiment:q} "
        "--run-name {params.run:q} --tag preset={params.preset} --tag dataset={params.dataset} "
        "--tag stage=pipeline --out {output} > {log} 2>&1"


rule write_run_config:
    output:
        f"{RUN}/stage{{stage}}/run_config.yaml",
    wildcard_constraints:
        stage="1|2",
    params:
        cfg=lambda w: json.dumps(S.run_configs[int(w.stage)], sort_keys=True),
    log:
        f"{RUN}/logs/write_run_config_stage{{stage}}.log",
    conda:
        CONDA_TRAIN
    shell:
        "python -m pipeline.write_run_config --json {params.cfg:q} --out {output} > {log} 2>&1"


rule train_stage1:
    input:
        unpack(lambda w: monitor_inputs(1)),
        cfg=f"{RUN}/stage1/run_config.yaml",
        data=f"{SHARDS}/train-64/manifest.json",
        index=f"{SHARDS}/train-index.h5",
        parent=f"{RUN}/mlflow/parent_run_id.txt",
    output:
        network=f"{RUN}/stage1/network-final.pt",
        metrics=f"{RUN}/stage1/metrics.json",
        curve=report(f"{RUN}/stage1/loss_curves.png", caption="../report/loss_curves.rst", category="Training", subcategory="Stage-I"),
        grid=report(f"{RUN}/stage1/samples.png", caption="../report/train_samples.rst", category="Training", subcategory="Stage-I"),
    params:
        data=lambda w, input: set_dir(input.data),
        workdir=f"{RUN}/work/stage1",
        launch=launch_args(1),
        monitor=lambda w, input: monitor_args(input),
        tracking=tracking_args("stage1"),
    log:
        f"{RUN}/logs/train_stage1.log",
    threads: config["resources"]["train_stage1"]["cpus_per_task"]
    resources:
        **train_resources(1),
    conda:
        CONDA_TRAIN
    shell:
        "python -m pipeline.launch {params.launch} -- -m stackgan.cli.train --config {input.cfg} --data {params.data} "
        "--workdir {params.workdir} --out {output.network} --metrics-out {output.metrics} "
        "--loss-curve {output.curve} --grid-out {output.grid} --grid-index {input.index} "
        "--parent-run-id-file {input.parent} {params.monitor} {params.tracking} 2>&1 | tee -a {log}"


rule train_stage2:
    input:
        unpack(lambda w: monitor_inputs(2)),
        cfg=f"{RUN}/stage2/run_config.yaml",
        data=f"{SHARDS}/train-256/manifest.json",
        index=f"{SHARDS}/train-index.h5",
        stage1=stage1_network,
        parent=f"{RUN}/mlflow/parent_run_id.txt",
    output:
        network=f"{RUN}/stage2/network-final.pt",
        metrics=f"{RUN}/stage2/metrics.json",
        curve=report(f"{RUN}/stage2/loss_curves.png", caption="../report/loss_curves.rst", category="Training", subcategory="Stage-II"),
        grid=report(f"{RUN}/stage2/samples.png", caption="../report/train_samples.rst", category="Training", subcategory="Stage-II"),
    params:
        data=lambda w, input: set_dir(input.data),
        workdir=f"{RUN}/work/stage2",
        launch=launch_args(2),
        monitor=lambda w, input: monitor_args(input),
        tracking=tracking_args("stage2"),
    log:
        f"{RUN}/logs/train_stage2.log",
    threads: config["resources"]["train_stage2"]["cpus_per_task"]
    resources:
        **train_resources(2),
    conda:
        CONDA_TRAIN
    shell:
        "python -m pipeline.launch {params.launch} -- -m stackgan.cli.train --config {input.cfg} --data {params.data} "
        "--workdir {params.workdir} --out {output.network} --metrics-out {output.metrics} "
        "--stage1-generator {input.stage1} --loss-curve {output.curve} --grid-out {output.grid} "
        "--grid-index {input.index} --parent-run-id-file {input.parent} {params.monitor} {params.tracking} 2>&1 | tee -a {log}"
