# MLflow parent run, per-stage run configs, and one training rule for both stages (DDP launch).
# Resumable training state lives in params.workdir, which is deliberately NOT a declared
# output: Snakemake deletes declared outputs of failed jobs, and a retried or requeued
# job must find its checkpoints. A job rerun because a setting, the shards or the Stage-I
# network changed moves the states it finds aside (work/stage<N>/superseded/) and starts at
# step 0 (--on-config-change restart; stackgan/training/identity.py). Editing code under
# stackgan/ does not retrain; force it with -R train_stage (or change the run name).


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


# The resolved pipeline config as parent-run params, so that pipeline runs compare on their
# settings in the MLflow UI; with the stage configs' hashes. Only the summary waits for it:
# a changed setting reruns this rule, never a training job.
rule write_pipeline_config:
    output:
        f"{RUN}/pipeline_config.yaml",
    params:
        cfg=pipeline_params(config),
    log:
        f"{RUN}/logs/write_pipeline_config.log",
    localrule: True
    run:
        write_pipeline_config(params.cfg, output[0], log[0])


rule mlflow_parent_params:
    input:
        parent=rules.mlflow_parent.output[0],
        cfg=rules.write_pipeline_config.output[0],
        stages=expand(f"{RUN}/stage{{stage}}/run_config.yaml", stage=S.stages),
    output:
        touch(f"{RUN}/mlflow/parent_params.done"),
    params:
        uri=tracking_uri(),
        hashes=lambda w, input: " ".join(
            f"--hash stage{s}={path}" for s, path in zip(S.stages, input.stages)
        ),
    log:
        f"{RUN}/logs/mlflow_parent_params.log",
    localrule: True
    conda:
        CONDA_TRAIN
    shell:
        "python -m stackgan track log-params --tracking-uri {params.uri:q} --parent-run-id-file {input.parent} "
        "--config {input.cfg} {params.hashes} > {log} 2>&1"


# The workflow already holds each stage's validated run config (pipeline/settings.py); it
# writes it itself. A changed value changes the params, so only that stage reruns.
rule write_run_config:
    output:
        f"{RUN}/stage{{stage}}/run_config.yaml",
    wildcard_constraints:
        stage="1|2",
    params:
        cfg=lambda w: S.run_configs[int(w.stage)],
    log:
        f"{RUN}/logs/write_run_config_stage{{stage}}.log",
    localrule: True
    run:
        write_run_config(params.cfg, output[0], log[0])


rule train_stage:
    input:
        unpack(train_inputs),
    output:
        network=f"{RUN}/stage{{stage}}/network-final.pt",
        metrics=f"{RUN}/stage{{stage}}/metrics.json",
        curve=train_report("loss_curves.png", "../report/loss_curves.rst"),
        grid=train_report("samples.png", "../report/train_samples.rst"),
    wildcard_constraints:
        stage="1|2",
    params:
        data=lambda w, input: set_dir(input.data),
        workdir=lambda w: f"{RUN}/work/stage{w.stage}",
        launch=lambda w: launch_args(int(w.stage)),
        monitor=lambda w, input: monitor_args(input),
        stage1=lambda w, input: f"--stage1-generator {input.stage1} " if w.stage == "2" else "",
        tracking=lambda w: tracking_args(f"stage{w.stage}"),
    log:
        f"{RUN}/logs/train_stage{{stage}}.log",
    threads: lambda w: config["resources"][f"train_stage{w.stage}"]["cpus_per_task"]
    resources:
        **{k: (lambda w, k=k: train_resources(int(w.stage)).get(k)) for k in TRAIN_RESOURCE_KEYS},
    conda:
        CONDA_TRAIN
    # `trap '' TERM USR1`: the shell and tee outlive a signal sent to every process of the
    # job (preemption, the time limit, scancel --full), so the ranks can log, save and exit
    # 75, and the launcher can requeue the job (pipeline/launch.py).
    shell:
        "trap '' TERM USR1; python -m pipeline.launch {params.launch} -- -m stackgan.cli.train --config {input.cfg} --data {params.data} "
        "--workdir {params.workdir} --on-config-change restart --out {output.network} --metrics-out {output.metrics} "
        "{params.stage1}--loss-curve {output.curve} --grid-out {output.grid} --grid-index {input.index} "
        "--parent-run-id-file {input.parent} {params.monitor} {params.tracking} 2>&1 | tee -a {log}"
