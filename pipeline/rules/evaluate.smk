# Evaluation: real-image statistics (only with Inception weights), the twin's attribute
# classifier, and per-stage evaluation (IS / FID / KID, conditional accuracy, grids).

rule train_attribute_classifier:
    input:
        train=shard_file("lr", "train"),
        train_index=shard_file("index", "train"),
        test=shard_file("lr", "test"),
        test_index=shard_file("index", "test"),
    output:
        model=f"{DATA}/attribute_classifier.pt",
        report=f"{DATA}/attribute_classifier.json",
    params:
        train=lambda w, input: set_dir(input.train),
        test=lambda w, input: set_dir(input.test),
        epochs=EVAL.classifier_epochs,
    log:
        f"{DATA}/logs/train_attribute_classifier.log",
    threads: config["resources"]["evaluate"]["cpus_per_task"]
    resources:
        mem_mb=config["resources"]["evaluate"]["mem_mb"],
        runtime=config["resources"]["evaluate"]["runtime"],
    conda:
        CONDA_TRAIN
    shell:
        "python -m stackgan attr-classifier --train-shards {params.train} --train-index {input.train_index} "
        "--test-shards {params.test} --test-index {input.test_index} --epochs {params.epochs} "
        "--out {output.model} --report {output.report} > {log} 2>&1"


rule real_stats:
    input:
        shard_file("hr", "test"),
    output:
        f"{DATA}/fid/real-test-256.h5",
    params:
        shards=lambda w, input: set_dir(input[0]),
        weights=EVAL.inception_weights or "",
        sha=f"--inception-sha256 {EVAL.inception_sha256}" if EVAL.inception_sha256 else "",
        batch=EVAL.batch_size,
    log:
        f"{DATA}/logs/real_stats.log",
    resources:
        **eval_resources(),
    conda:
        CONDA_TRAIN
    shell:
        "python -m stackgan evaluate real-stats --shards {params.shards} --out {output} "
        "--inception-weights {params.weights:q} {params.sha} --batch-size {params.batch} 2>&1 | tee {log}"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        metrics=report(f"{RUN}/eval/stage{{stage}}/metrics.json", caption="../report/eval_metrics.rst", category="Evaluation", subcategory="Stage-{stage}"),
        grid=report(f"{RUN}/eval/stage{{stage}}/grid.png", caption="../report/eval_grid.rst", category="Evaluation", subcategory="Stage-{stage}"),
    wildcard_constraints:
        stage="1|2",
    params:
        args=eval_args,
        out=lambda w, output: os.path.dirname(output.metrics),
        launch=eval_launch,
        tracking=lambda w: tracking_args(f"eval-stage{w.stage}"),
    log:
        f"{RUN}/logs/evaluate_stage{{stage}}.log",
    threads: config["resources"]["evaluate"]["cpus_per_task"]
    resources:
        **eval_resources(),
    conda:
        CONDA_TRAIN
    shell:
        "python -m pipeline.launch {params.launch} -- -m stackgan.cli.evaluate --network {input.network} "
        "--index {input.index} --out {params.out} {params.args} --parent-run-id-file {input.parent} "
        "{params.tracking} 2>&1 | tee {log}"
